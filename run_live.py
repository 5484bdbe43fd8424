"""Animate an avatar photo with your webcam: `python run_live.py --avatar photo.jpg` (see README)."""
import os
import sys

# Must precede numpy's import. OpenBLAS's worker threads spin while they wait; next to MediaPipe's
# threads on a small CPU, the first tiny LAPACK call (the mesh engine's triangulation) stalled startup
# for seconds. The app's matrices are tiny, so a single BLAS thread loses nothing.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

from avatarify.app import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
