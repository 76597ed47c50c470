"""Entry point for ``ray job submit``: the same arguments as ``rescored-ray batch``.

    ray job submit --address http://HEAD:8265 --working-dir . -- \\
        python jobs/transcribe_playlist.py "https://www.youtube.com/playlist?list=..." \\
        --output s3://bucket/scores --config configs/batch.yaml

Inside a Ray job, RAY_ADDRESS points at the cluster, so the run joins it rather than
starting a Ray of its own.
"""

import sys
from pathlib import Path

# --working-dir uploads this repository; make its package importable even where the
# cluster's setup commands did not install it.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rescored_ray.cli import app  # noqa: E402

if __name__ == "__main__":
    app(["batch", *sys.argv[1:]], prog_name="transcribe_playlist.py")
