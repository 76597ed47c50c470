#!/usr/bin/env bash
# Set-up for bench/notation_quality.py: MuseScore 3 (Debian musescore3, run headless), a JDK, FluidSynth with
# a GM soundfont, and MV2H built from ../shared/tools/mv2h into bench/.cache/notation/mv2h (git-ignored).
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v mscore3 >/dev/null 2>&1 || need+=(musescore3)
command -v javac >/dev/null 2>&1 || need+=(default-jdk-headless)
command -v fluidsynth >/dev/null 2>&1 || need+=(fluidsynth)
ls /usr/share/sounds/sf2/*.sf2 >/dev/null 2>&1 || need+=(fluid-soundfont-gm)
if [ ${#need[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -q
  $SUDO apt-get install -y -q --no-install-recommends "${need[@]}"
fi

mv2h_src=${MV2H_SRC:-../shared/tools/mv2h}
bash "$mv2h_src/build.sh" bench/.cache/notation/mv2h
QT_QPA_PLATFORM=offscreen mscore3 --version 2>/dev/null | head -1
