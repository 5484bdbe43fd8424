"""Real-time webcam avatar puppeteer: a webcam drives a still photo, shown on a virtual camera."""
