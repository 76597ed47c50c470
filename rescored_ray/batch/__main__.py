"""``python -m rescored_ray.batch SOURCE... --output OUT``: a batch run, the same arguments as
``rescored-ray batch``. It is the entry point of batch runs submitted as Ray jobs
(``Client.batch``, ``ray job submit``): inside a Ray job, RAY_ADDRESS points at the
cluster, so the run joins it rather than starting a Ray of its own.
"""

import sys


def main(argv: list[str] | None = None, prog_name: str = "python -m rescored_ray.batch") -> None:
    from rescored_ray.cli import app

    app(["batch", *(sys.argv[1:] if argv is None else argv)], prog_name=prog_name)


if __name__ == "__main__":
    main()
