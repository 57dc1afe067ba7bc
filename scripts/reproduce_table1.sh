#!/usr/bin/env bash
# Reproduce the SDM-VAE paper's Table 1 (and the other sparse models) with the CLI only.
#
#   scripts/reproduce_table1.sh [-P N] [-d DATA_ROOT] [-o OUT] [-s "prepare train evaluate table"]
#                               [-S SPLIT_FILE] [-e MAX_EPOCHS] [-D DEVICE] [-l LIMIT]
#
# -P N     run N trainings (and evaluations) at once (on the 16-core GPU machine: all of them)
# -d DIR   corpus root in the 'folder' layout (default ../shared/data)
# -S FILE  speaker split (default scripts/table1_split.json; the exact split of docs/results.md)
# -e N     maximum epochs (default 500, the paper's); early stopping patience stays 20
# -s LIST  stages to run (default all four)
# -l N     evaluate only the first N test utterances (quick checks)
set -euo pipefail
cd "$(dirname "$0")/.."

P=1; DATA=../shared/data; OUT=out/table1; STAGES="prepare train evaluate table"
SPLIT=scripts/table1_split.json; EPOCHS=500; DEVICE=auto; LIMIT=""
while getopts "P:d:o:s:S:e:D:l:" opt; do
  case $opt in
    P) P=$OPTARG ;; d) DATA=$OPTARG ;; o) OUT=$OPTARG ;; s) STAGES=$OPTARG ;;
    S) SPLIT=$OPTARG ;; e) EPOCHS=$OPTARG ;; D) DEVICE=$OPTARG ;; l) LIMIT="--limit $OPTARG" ;;
    *) echo "usage: $0 [-P N] [-d DATA] [-o OUT] [-s STAGES] [-S SPLIT] [-e EPOCHS] [-D DEVICE] [-l LIMIT]" >&2; exit 2 ;;
  esac
done
SDMVAE=${SDMVAE:-sdmvae}

# name|options: Table 1 rows for m in {32, 64}, then the other registered models at m = 64
configs() {
  for m in 32 64; do
    echo "vae-m$m|--model vae --latent $m"
    for a in 0.05 0.5 0.9; do echo "vsc-a$a-m$m|--model vsc --alpha $a --latent $m"; done
    echo "sdm-identity-m$m|--model sdm --dict identity --k $m --latent $m"
    echo "sdm-dct-k32-m$m|--model sdm --dict dct --k 32 --latent $m"
    echo "sdm-dct-k64-m$m|--model sdm --dict dct --k 64 --latent $m"
  done
  echo "sdm-learned-k64-m64|--model sdm --dict learned --k 64 --coherence 0.1 --latent 64"
  echo "threshold-gauss-m64|--model threshold --base gaussian --threshold 0.5 --latent 64"
  echo "threshold-laplace-m64|--model threshold --base laplace --threshold 0.5 --latent 64"
  echo "threshold-learned-m64|--model threshold --learn-threshold --samples 4 --latent 64"
  echo "laplace-m64|--model laplace --latent 64"
  echo "cauchy-m64|--model cauchy --latent 64"
}

mkdir -p "$OUT/runs" "$OUT/eval" "$OUT/logs"
for stage in $STAGES; do
  case $stage in
    prepare)
      $SDMVAE prepare folder "$DATA" "$OUT/prep" --split-file "$SPLIT" -j "$(nproc)" ;;
    train)
      configs | P=$P xargs -P "$P" -d '\n' -I{} bash -c '
        name=${1%%|*}; args=${1#*|}
        start=$(date +%s)
        '"$SDMVAE"' train "'"$OUT"'/prep" $args --epochs '"$EPOCHS"' --device '"$DEVICE"' --seed 0 --overwrite --out "'"$OUT"'/runs/$name" \
          > "'"$OUT"'/logs/$name.train.log" 2>&1 && status=ok || status=FAILED
        echo "$name,$status,$(( $(date +%s) - start ))" | tee -a "'"$OUT"'/logs/train_seconds.csv"
      ' _ {} ;;
    evaluate)
      jobs=$(( $(nproc) / P )); [ "$jobs" -ge 1 ] || jobs=1
      configs | cut -d'|' -f1 | xargs -P "$P" -I{} bash -c '
        [ -f "'"$OUT"'/runs/$1/best.pt" ] || { echo "skip $1: no checkpoint"; exit 0; }
        '"$SDMVAE"' evaluate "'"$OUT"'/runs/$1/best.pt" "'"$OUT"'/prep" --split test --overwrite --out "'"$OUT"'/eval/$1" -j '"$jobs"' '"$LIMIT"' \
          > "'"$OUT"'/logs/$1.eval.log" 2>&1 || echo "evaluate $1: not every file scored (see logs/$1.eval.log)"
      ' _ {} ;;
    table)
      $SDMVAE table "$OUT"/eval/*/summary.json --format markdown --overwrite --out "$OUT/table1.md"
      $SDMVAE table "$OUT"/eval/*/summary.json --format csv --overwrite --out "$OUT/table1.csv"
      $SDMVAE table "$OUT"/eval/*/summary.json ;;
    *) echo "unknown stage $stage" >&2; exit 2 ;;
  esac
done
