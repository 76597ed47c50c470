"""``ray job submit`` entry point for a source checkout: ``python -m rescored_ray.batch`` with
the checkout's own package (the same arguments as ``rescored-ray batch``).

    ray job submit --address http://HEAD:8265 --working-dir . -- \\
        python jobs/transcribe_playlist.py "https://www.youtube.com/playlist?list=..." \\
        --output s3://bucket/scores --config configs/batch.yaml
"""

import sys
from pathlib import Path

# --working-dir uploads this repository; make its package importable even where the
# cluster's setup commands did not install it.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rescored_ray.batch.__main__ import main

if __name__ == "__main__":
    main(prog_name="transcribe_playlist.py")
