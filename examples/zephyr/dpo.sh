#!/usr/bin/env bash
# Stage 3: DPO of the SFT model (ATTN=50, 25 or 12.5), the frozen SFT model as the reference.
# EPOCHS=1 uses beta 0.01, EPOCHS=3 beta 0.1 (the Zephyr paper's two settings).
#   ATTN=50 EPOCHS=1 NPROC=8 bash examples/zephyr/dpo.sh [--tiny] [key=value ...]
source "$(dirname "$0")/common.sh"
ATTN=${ATTN:-50}
V=$(sft_variant)  # the SFT variant to start from (WITH_DISTILL, SFT_MODE, PACK as for sft.sh)
case $ATTN in
  50) SFT=zephyr_0.50_${KIND}_sft$V NAME=${KIND}_0_5$V ;;
  25) SFT=zephyr_0.75_${KIND}_sft$V NAME=${KIND}_0_75$V ;;
  12.5) SFT=zephyr_0.875_${KIND}_sft$V NAME=${KIND}_0_875$V ;;
  *) echo "ATTN=$ATTN is unknown; expected 50, 25 or 12.5" >&2 && exit 2 ;;
esac
case ${EPOCHS:-1} in
  1) BETA=0.01 ;;
  3) BETA=0.1 ;;
  *) echo "EPOCHS=$EPOCHS is unknown; expected 1 (beta 0.01) or 3 (beta 0.1)" >&2 && exit 2 ;;
esac
[[ -z ${TINY:-} ]] || set -- data.max_prompt_length=32 "$@"  # below the tiny item_length
train dpo train.run_name="${NAME}_dpo_ep${EPOCHS:-1}" train.init_from="$OUT/$SFT" \
  train.num_train_epochs="${EPOCHS:-1}" dpo.beta="$BETA" data.path="$PREFS" "$@"
