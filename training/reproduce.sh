#!/usr/bin/env bash
# Reproduces every recommender from ../shared/data on this machine's CPU (a GPU is never needed).
# Each model stops early on its validation split, and after --max-minutes at the latest.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.tools/venv/bin/python}
DATA=../shared/data/seqrec
$PY training/train.py --model sasrec  --data recbole:$DATA/recbole_ml100k --out models/sasrec-ml100k --name sasrec-ml100k --version 2 "$@"
$PY training/train.py --model gru4rec --data recbole:$DATA/recbole_ml100k --out models/gru4rec-ml100k --name gru4rec-ml100k "$@"
$PY training/train.py --model memory  --data recbole:$DATA/recbole_ml100k --out models/memory-ml100k --name memory-ml100k "$@"
$PY training/train.py --model sasrec  --data $DATA/sasrec_games/Video.txt --out models/sasrec-games --name sasrec-games "$@"
$PY training/train.py --model memory  --data $DATA/sasrec_games/Video.txt --out models/memory-games --name memory-games "$@"
$PY training/train.py --model gru4rec --data $DATA/sasrec_games/Video.txt --out models/gru4rec-games --name gru4rec-games "$@"
