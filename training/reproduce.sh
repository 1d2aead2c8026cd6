#!/usr/bin/env bash
# Reproduces every model from ../shared/data on this machine's CPU (a GPU is never needed), then
# writes each model's card from its measured metrics. Each model stops early on its validation
# split, and after --max-minutes at the latest. Extra arguments go to every recommender.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.tools/venv/bin/python}
DATA=../shared/data
GAMES=$DATA/seqrec/sasrec_games/Video.txt
ML100K=recbole:$DATA/seqrec/recbole_ml100k
ML1M=gsasrec:$DATA/seqrec/ml1m_gsasrec_split

$PY training/train.py --model sasrec  --data $ML100K --out models/sasrec-ml100k  --name sasrec-ml100k --version 3 "$@"
$PY training/train.py --model gru4rec --data $ML100K --out models/gru4rec-ml100k --name gru4rec-ml100k --version 2 "$@"
$PY training/train.py --model memory  --data $ML100K --out models/memory-ml100k  --name memory-ml100k --version 2 "$@"
$PY training/train.py --model sasrec  --data $GAMES  --out models/sasrec-games   --name sasrec-games --max-minutes 40 "$@"
$PY training/train.py --model memory  --data $GAMES  --out models/memory-games   --name memory-games --max-minutes 40 "$@"
$PY training/train.py --model gru4rec --data $GAMES  --out models/gru4rec-games  --name gru4rec-games --max-minutes 40 "$@"
$PY training/train.py --model sasrec  --data $ML1M   --out models/sasrec-ml1m    --name sasrec-ml1m --valid-users 512 --max-minutes 35 "$@"
$PY training/forecast.py --data $DATA/supply/supplygraph/homogeneous --out models/demand-supplygraph

$PY training/model_card.py models/*/
