#!/usr/bin/env bash
# Reproduces every model from ../shared/data on this machine's CPU (a GPU is never needed), then
# writes each model's card from its measured metrics. Each model stops early on its validation
# split, with no time cap, so a slower machine trains the same model, only later (Games and
# MovieLens-1M take an hour or more each here). Extra arguments go to every recommender.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.tools/venv/bin/python}
DATA=../shared/data
GAMES=$DATA/seqrec/sasrec_games/Video.txt
ML100K=recbole:$DATA/seqrec/recbole_ml100k
ML1M=gsasrec:$DATA/seqrec/ml1m_gsasrec_split

# SASRec refits by default: once validation has chosen the epochs, it trains again on the training and
# validation items (models/README.md, "Refit"); GRU4Rec and the memory model refit only when asked.
$PY training/train.py --model sasrec  --data $ML100K --out models/sasrec-ml100k  --name sasrec-ml100k --version 5 "$@"
$PY training/train.py --model gru4rec --data $ML100K --out models/gru4rec-ml100k --name gru4rec-ml100k --version 3 "$@"
$PY training/train.py --model memory  --data $ML100K --out models/memory-ml100k  --name memory-ml100k --version 3 "$@"
# Games is sparse (9 items per user): SASRec takes the paper's dropout 0.5 there, which validated
# better than 0.2, and d = 128, which validated 4.5% better than 64 on every user's validation item
# (a 5,000-user sample could not tell them apart, so Games validates on all). Its refit adds every
# user's validation item, 16% more training targets and the most recent ones. Its learning rate falls
# to 0 over 20 epochs along a half cosine, which validated 1.8% better than a constant one
# (models/README.md, "Ablation").
$PY training/train.py --model sasrec  --data $GAMES  --out models/sasrec-games   --name sasrec-games --version 6 --dropout 0.5 --dim 128 --valid-users 0 --schedule cosine --epochs 20 "$@"
$PY training/train.py --model memory  --data $GAMES  --out models/memory-games   --name memory-games --version 2 "$@"
$PY training/train.py --model gru4rec --data $GAMES  --out models/gru4rec-games  --name gru4rec-games --version 2 "$@"
# MovieLens-1M's long sequences (165 items on average) take d = 128, which validated 5% better than
# 64 there; on MovieLens-100k the two were within 1% (models/README.md, "Ablation"). No refit: the
# split withholds the validation item of all but its 512 validation users, so a refit would add 512
# targets to 981,491 for another 17 epochs of training.
$PY training/train.py --model sasrec  --data $ML1M   --out models/sasrec-ml1m    --name sasrec-ml1m --version 3 --valid-users 512 --dim 128 --no-refit "$@"
$PY training/forecast.py --data $DATA/supply/supplygraph/homogeneous --out models/demand-supplygraph --version 2

$PY training/model_card.py models/*/
