"""Writes examples/quickstart.ipynb (the notebook is generated, so its source stays reviewable here).

.venv/bin/python examples/make_quickstart.py
"""

from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

CELLS = [
    new_markdown_cell(
        "# rescored-ray quickstart\n\n"
        "Start a local service, submit the bundled example, watch its progress, see the score, "
        "and run a tiny playlist as a batch job. Everything runs on this machine (local Ray, no internet).\n\n"
        "The demo config transcribes the recording without source separation (it is a solo piano "
        "recording); on a machine with Demucs weights, drop the `separation` override."
    ),
    new_code_cell(
        "import os\n"
        "import socket\n"
        "import tempfile\n"
        "from pathlib import Path\n\n"
        "import rescored_ray\n"
        "from rescored_ray.service.runner import dashboard_url, serve_folder, start_service, stop_service\n"
        "from rescored_ray.settings import load_settings\n\n"
        "REPO = next(p for p in [Path.cwd(), *Path.cwd().parents] if (p / 'jobs' / 'transcribe_playlist.py').is_file())\n"
        "WORK = Path(tempfile.mkdtemp(prefix='rescored-quickstart-'))  # service data, downloads, batch output\n\n"
        "def free_port():\n"
        "    with socket.socket() as s:\n"
        "        s.bind(('127.0.0.1', 0))\n"
        "        return s.getsockname()[1]\n\n"
        "config = load_settings(overrides={\n"
        "    'service': {'data_dir': str(WORK / 'service'),\n"
        "                'security': {'allow_private_networks': True}},  # the example is served on loopback below\n"
        "    'pipeline': {'separation': {'model': 'none'}, 'transcription': {'stems': ['mix']}},\n"
        "})\n"
        "# a new local Ray, or the cluster in RAY_ADDRESS when one is set\n"
        "base_url = start_service(config, port=free_port(), address=os.environ.get('RAY_ADDRESS'))\n"
        "files, files_url = serve_folder(REPO / 'examples')\n"
        "client = rescored_ray.Client(base_url)\n"
        "print('service:', base_url, '| Ray dashboard:', dashboard_url())"
    ),
    new_markdown_cell(
        "Submit the bundled example (a Bach chorale rendered on piano) and follow it live: "
        "the bar is fed by the job's WebSocket stream."
    ),
    new_code_cell(
        "job = client.submit(f'{files_url}/chorale.mp3')\n"
        "status = job.wait()\n"
        "status['status'], status['result']['key'], status['result']['tempo_bpm']"
    ),
    new_markdown_cell("The result is a `Score`; a cell that ends in one shows the sheet music."),
    new_code_cell("score = job.result()\nscore"),
    new_code_cell("score.notes.head(10)"),
    new_code_cell("folder = job.download(WORK / 'chorale')\nsorted(p.name for p in folder.iterdir())"),
    new_markdown_cell(
        "## A tiny playlist as a batch job\n\n"
        "A folder of two recordings (the example and a 12-second excerpt of it) goes through the Ray Data "
        "pipeline as a Ray job submitted through the Ray Jobs API, exactly like "
        "`ray job submit -- python -m rescored_ray.batch ...`."
    ),
    new_code_cell(
        "import soundfile\n"
        "from rescored_ray.decode import decode_audio\n\n"
        "playlist = WORK / 'playlist'\n"
        "playlist.mkdir(parents=True, exist_ok=True)\n"
        "(playlist / 'chorale.mp3').write_bytes((REPO / 'examples' / 'chorale.mp3').read_bytes())\n"
        "audio = decode_audio(REPO / 'examples' / 'chorale.mp3')\n"
        "soundfile.write(playlist / 'chorale-excerpt.flac', audio.samples[:, : 12 * audio.sample_rate].T, audio.sample_rate)\n\n"
        "batch_config = WORK / 'batch.yaml'\n"
        "batch_config.write_text('batch: {transcriber: {num_cpus: 1}}\\n'\n"
        "                        'pipeline: {separation: {model: none}, transcription: {stems: [mix]}}\\n')\n"
        "run = client.batch([str(playlist)], str(WORK / 'batch-out'), config=str(batch_config),\n"
        "                   ray_address=dashboard_url())\n"
        "run.wait(timeout=600)\n"
        "print(run.summary())\n"
        "manifest = run.manifest()\n"
        "manifest[['id', 'status', 'duration_s', 'n_notes', 'key', 'tempo_bpm', 'transcription_s']]"
    ),
    new_code_cell(
        "rescored_ray.Score.from_dir(Path(manifest.loc[manifest.id.str.startswith('chorale-excerpt'), 'musicxml'].iloc[0]).parent)"
    ),
    new_code_cell("files.shutdown()\nclient.close()\nstop_service()"),
]


def main() -> None:
    notebook = new_notebook(
        cells=CELLS,
        metadata={
            "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
            "language_info": {"name": "python"},
        },
    )
    path = Path(__file__).with_name("quickstart.ipynb")
    nbformat.write(notebook, path)
    print(path)


if __name__ == "__main__":
    main()
