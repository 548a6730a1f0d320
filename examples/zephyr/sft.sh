#!/usr/bin/env bash
# Stage 2: end-to-end training of the hybrid with ATTN=50, 25 or 12.5 percent attention layers.
# 50: from the progressive distillation (WITH_DISTILL=1) or from Zephyr with its layers
# initialised from attention (WITH_DISTILL=0); 25 and 12.5: from the previous SFT model, its
# newly swapped layers initialised from attention. SFT_MODE=ce trains on the chats' assistant
# tokens; SFT_MODE=kl on the logits KL from the attention teacher (Zephyr itself here).
# PACK=1 packs the chats into full rows and trains on every token, as MambaInLlama's SFT did.
# The run is zephyr_0.50_mamba_sft (0.75, 0.875; mamba2 with MIXER=S), suffixed by its variant:
# _nodistill (WITH_DISTILL=0), _kl, _packed; ATTN=25 and 12.5 continue the same variant's run.
#   ATTN=50 NPROC=8 bash examples/zephyr/sft.sh [--tiny] [key=value ...]
source "$(dirname "$0")/common.sh"
MODE=()
case ${SFT_MODE:-ce} in
  ce) ;;
  kl) teacher
    MODE=(distill.teacher="$OUT/teacher" distill.alpha_ce_loss=0 distill.alpha_logits_distill_loss=1
      distill.logits_temperature=1 distill.logits_kl_reduction=batchmean) ;;
  *) echo "SFT_MODE=$SFT_MODE is unknown; expected ce or kl" >&2 && exit 2 ;;
esac
ATTN=${ATTN:-50}
V=$(sft_variant)
case $ATTN in
  50) NAME=zephyr_0.50_${KIND}_sft$V
    if [[ ${WITH_DISTILL:-1} == 1 ]]; then INIT=$OUT/zephyr_0.50_$KIND
    else INIT=$OUT/init_0.50_${KIND}_from_zephyr; from_zephyr "$(pattern 0.5)" "$INIT"; fi ;;
  25) NAME=zephyr_0.75_${KIND}_sft$V INIT=$OUT/init_0.75_${KIND}_sft$V
    swapped "$OUT/zephyr_0.50_${KIND}_sft$V" "$(pattern 0.75)" "$INIT" ;;
  12.5) NAME=zephyr_0.875_${KIND}_sft$V INIT=$OUT/init_0.875_${KIND}_sft$V
    swapped "$OUT/zephyr_0.75_${KIND}_sft$V" "$(pattern 0.875)" "$INIT" ;;
  *) echo "ATTN=$ATTN is unknown; expected 50, 25 or 12.5" >&2 && exit 2 ;;
esac
if [[ $ATTN == 50 && ${WITH_DISTILL:-1} == 1 && ! -d $INIT ]]; then
  echo "$INIT does not exist: run stage 1 first (examples/zephyr/progressive.sh, with the same" \
    "MIXER), or start from Zephyr itself with WITH_DISTILL=0" >&2
  exit 2
fi
[[ ${PACK:-0} == 1 ]] && MODE+=(data.pack=true data.train_on=all)
train sft train.run_name="$NAME" train.init_from="$INIT" data.path="$SFT_DATA" "${MODE[@]}" "$@"
