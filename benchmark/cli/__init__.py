"""`benchmark` command line: one module per command (`benchmark.cli.<command>.main(args)`), imported when run."""
from __future__ import annotations

import argparse
import importlib
import sys

from benchmark.cli.common import EXIT_USAGE, _qf_override, _qf_range, _qf_set


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="benchmark", description="carbench: compression-artifact reduction benchmark")
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser("run", help="evaluate methods and upsert leaderboard rows")
    r.add_argument("--method", default="dncnn", help="comma list of method or method.preset names")
    r.add_argument("--qf", default=None, help="quality factors: 10,20 or chains '30>10' (double compression; quote "
                   "them, > is a shell redirect), or a name: seen (10,20,30,40), "
                   "unseen (15,25,35,45: JARCAL Table 4, QFs a model trained on 10..90 step 10 never saw); with "
                                             "--passes, the set each pass draws from")
    r.add_argument("--dataset", default="samples", help="comma list: samples, live1, live1-gray, classic5, bsds500, "
                                                       "cbsd68, bsd68, a folder; ':y' suffix = MATLAB-Y gray protocol")
    r.add_argument("--data-root", default=None, help="folder holding the named datasets (default $CARBENCH_DATA)")
    r.add_argument("--codec", default="jpeg", choices=["jpeg", "avif"])
    r.add_argument("--passes", default=None, help="multi-pass: pass counts, a list (1,3) or a range (1..5); each "
                                                  "pass draws its QF from --qf (default 25,18,15,10,7)")
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--subsampling", default="420", choices=["420", "444"], help="chroma subsampling of colour images")
    r.add_argument("--channels", default="rgb", choices=["rgb", "y"], help="score RGB (or gray) or MATLAB Y")
    r.add_argument("--metrics", default="psnr,ssim,psnrb", help="comma list of fidelity metrics: psnr, ssim, psnrb "
                   "(always computed: every row carries them), lpips (AlexNet LPIPS from the local torchvision "
                   "file), fid and kid (set-level, from the local Inception file; pip install .[fid]); see the "
                   "README's metrics section")
    r.add_argument("--inception-weights", default=None, metavar="FILE", help="fid/kid: torch-fidelity's Inception "
                   "file weights-inception-2015-12-05-6726825d.pth (default: $TORCH_HOME/hub/checkpoints/)")
    r.add_argument("--preset", default=None)
    r.add_argument("--weights", default=None, help="weights file for the (non-reference) methods")
    r.add_argument("--qf-override", type=_qf_override, default=None, metavar="QF",
                   help="FBCNN's flexible control: restore as if every input had this QF (1..100) instead of the "
                        "predicted one; rows get preset `<preset>@qf<QF>`")
    r.add_argument("--leaderboard", default=None, help="CSV (or folder: its fidelity.csv) to upsert into (default "
                   "$CARBENCH_RESULTS or ./carbench-results/; the committed boards: --leaderboard leaderboards/)")
    r.add_argument("--cache-dir", default=None)
    r.add_argument("--no-cache", action="store_true")
    r.add_argument("--no-reference", action="store_true", help="do not add the `jpeg` reference rows "
                   "(--task: the clean/direct rows)")
    r.add_argument("--accelerator", default="auto")
    r.add_argument("--devices", default=1, type=lambda s: int(s) if s.isdigit() else s)
    r.add_argument("--tile", type=int, default=None, metavar="N", help="restore images larger than N x N "
                   "in overlapping tiles of at most N px (overlap included; exact for local restorers)")
    r.add_argument("--memory-budget", type=float, default=None, metavar="GB", help="restore an image in "
                   "tiles when its estimated activation memory exceeds this (default $CARBENCH_MEMORY_BUDGET or 2)")
    r.add_argument("--dry-run", action="store_true", help="print the jobs the run would do (methods x datasets x "
                   "corruptions; --task: tasks x methods x corruptions) and exit: nothing is evaluated or written")
    g = r.add_argument_group("downstream tasks (--task)")
    g.add_argument("--task", default=None, help="comma list: classification, detection, segmentation; scores the "
                                               "task model on clean, corrupted (direct) and restored images; the "
                                               "dataset defaults to `shapes`, --leaderboard is then a folder")
    g.add_argument("--task-model", default=None, help="task network (default: the shipped shapes model; real "
                                                     "datasets: efficientnet_lite0 / centernet_mbv3 / pspnet_r50-d8; "
                                                     "segmentation on photos: selfie_seg)")
    g.add_argument("--task-weights", default=None, help="weights file of the task network")
    g.add_argument("--n-images", type=int, default=None, help="images per task (shapes default 300/150/150)")
    g.add_argument("--batch-size", type=int, default=16)
    g.add_argument("--imagenet-c-resave", action="store_true", help="re-save each JPEG at quality 85, as the "
                                                                    "released ImageNet-C files were")
    g.add_argument("--seg-mode", default="whole", choices=["whole", "slide"], help="PSPNet inference as mmseg's "
                                                                                 "test_cfg mode (real models)")
    g.add_argument("--wnids", default=None, help="ImageNet: file listing the model's 1000 wnids in class order")
    g.add_argument("--min-mask-share", type=float, default=0.1,
                   help="segmentation on photos: score the photos whose clean person mask covers at least this "
                        "share of the pixels (the others are skipped and counted; default 0.1)")
    r.add_argument("--quiet", action="store_true", help="no progress bars (they go to stderr)")
    r.set_defaults(module="run")

    ls = sub.add_parser("list", help="list methods and datasets")
    ls.add_argument("pattern", nargs="?", default="*")
    ls.add_argument("--details", action="store_true", help="print the method's card (`list --details afd`): "
                    "presets with kwargs and weights file, its module's summary, the retrain command")
    ls.set_defaults(module="list")

    t = sub.add_parser("train", help="train a method preset and save its checkpoint")
    t.add_argument("--method", default=None, help="method to train (default dncnn, or the --config's)")
    t.add_argument("--config", default=None, help="YAML training recipe, e.g. dagn_paper.yaml "
                                                  "(benchmark/configs/); explicit flags override it")
    t.add_argument("--stage", action="append", default=None,
                   help="multi-stage methods (dagn: autoencoders, restorer): run only this stage (repeatable)")
    t.add_argument("--task", default=None, choices=["classification", "detection", "segmentation"],
                   help="train the compact shapes task model instead of a restorer")
    t.add_argument("--model", default=None, help="with --task: shapes-cnn, shapes-frcnn or shapes-pspnet")
    t.add_argument("--preset", default=None)
    t.add_argument("--steps", type=int, default=None)
    t.add_argument("--batch-size", type=int, default=None)
    t.add_argument("--crop", type=int, default=None)
    t.add_argument("--lr", type=float, default=None)
    t.add_argument("--seed", type=int, default=None)
    t.add_argument("--train-dir", default=None, help="training images (default ../shared/data/train/BSDS500_train)")
    t.add_argument("--noise2noise", action="store_true", help="targets = a second JPEG of the same crop (no "
                                                              "clean image; N2N U-Net's Noise2Noise mode)")
    t.add_argument("--qf-range", type=_qf_range, default=None, metavar="LO,HI",
                   help="JPEG qualities drawn for training crops, e.g. 10,10 for a per-QF model (default 5,50)")
    t.add_argument("--qf-set", type=_qf_set, default=None, metavar="Q,Q,...",
                   help="JPEG qualities to draw from (feature de-drifters: default 25,18,15,10,7)")
    t.add_argument("--task-model", default=None, help="afd / degradation_prior / jpeg_finetune: the frozen "
                                                      "classifier (default: the preset's backbone)")
    t.add_argument("--task-weights", default=None, help="that classifier's weights file")
    t.add_argument("--depth", default=None, choices=["D1", "D2", "D3", "D4"],
                   help="afd / degradation_prior: the tap (paper Table I; default the preset's)")
    t.add_argument("--protocol", default=None, choices=["out-of-domain", "in-domain"],
                   help="afd / degradation_prior / jpeg_finetune: the fair trial's protocols (one budget, crop and "
                        "schedule for all): out-of-domain = BSDS500 train + scikit-image photos, label-free; "
                        "in-domain = the ImageNet sample 2-fold by class parity (no photo scored by a model that saw "
                        "it); see the guide's 'A fair trial for the feature de-drifters'")
    t.add_argument("--labels", default=None, choices=["labels", "none"],
                   help="jpeg_finetune: cross-entropy on the labels (default, as the shipped preset; not "
                        "out-of-domain) or none (KL distillation from the frozen classifier's clean predictions)")
    t.add_argument("--clean-share", type=float, default=None, metavar="P",
                   help="share of training crops left uncompressed (target: their own clean features), e.g. 0.2")
    t.add_argument("--loss", default=None, choices=["feature-mse", "logit-kl"],
                   help="afd / degradation_prior: MSE to the clean features at the tap (default) or KL between the "
                        "frozen classifier's outputs on the clean and on the corrected image (label-free)")
    t.add_argument("--save-at", default=None, metavar="F,F,...",
                   help="also export the network at these fractions of the steps (learning curve): 0.25,0.5,1 "
                        "writes <out>.q25.pt, <out>.q50.pt and <out>")
    t.add_argument("--train-images", type=int, default=None, metavar="N",
                   help="afd / degradation_prior / jpeg_finetune: train on the first N training photos only (the "
                        "data-size curve of AFD's Fig. 11: 20 / 200 / all)")
    t.add_argument("--init", default=None, help="start from these weights (fine-tune) instead of random init")
    t.add_argument("--ckpt-dir", default=None, help="write Lightning checkpoints (last.ckpt) here during training")
    t.add_argument("--resume", default=None, help="resume an interrupted run from its Lightning checkpoint")
    t.add_argument("--out", default=None, help="checkpoint path (default: $CARBENCH_WEIGHTS or "
                   "~/.cache/carbench/weights/, under the preset's file name; never the shipped one unless named here)")
    t.add_argument("--accelerator", default="auto")
    t.add_argument("--devices", default="auto", type=lambda s: int(s) if s.isdigit() else s,
                   help="Lightning devices: several run DDP (one process each; torchrun works too)")
    t.set_defaults(module="train")

    b = sub.add_parser("bench", help="throughput benchmarks (prints ratios measured in one run)")
    b.add_argument("--images", type=int, default=6, help="scikit-image photos in the codec and cache benchmarks")
    b.add_argument("--full-images", type=int, default=29,
                   help="whole LIVE1 images (scikit-image photos at full size without a data root) in the metric "
                        "and reference-run benchmarks")
    b.add_argument("--repeat", type=int, default=3)
    b.add_argument("--map-images", type=int, default=500, help="images in the detection mAP benchmark")
    b.add_argument("--forwards", action="store_true", help="forward passes instead: every shipped restorer and task "
                   "model at the boards' sizes vs a reference convolution, each network's forward plan chosen by "
                   "measurement, then whole board rows plain vs tuned")
    b.add_argument("--record", action="store_true", help="with --forwards: write the chosen plans to "
                   "lightning_modules/forward_plans.json (what runs use)")
    b.add_argument("--models", default=None, help="with --forwards: comma list of network names or wildcards")
    b.add_argument("--row-images", type=int, default=100, help="with --forwards: photos of the ImageNet sample in "
                   "each whole-row timing (1000: the boards' rows; 0: no rows)")
    b.add_argument("--row-method", default="jarcal", help="with --forwards: the restorer of the whole-row timings")
    b.add_argument("--row-tasks", default="classification,detection", help="with --forwards: the rows timed "
                   "(classification: Lite0 on the 224 crops; detection: CenterNet on the whole photos)")
    b.set_defaults(module="bench")

    e = sub.add_parser("efficiency", help="params, FLOPs and CPU latency per preset -> leaderboards/efficiency.csv")
    e.add_argument("--method", default="dagn.*,n2n_unet.compact,n2n_unet.paper,dncnn.*",
                   help="comma list of method.preset names or wildcards")
    e.add_argument("--size", type=int, default=512, help="square input size (the papers' 512x512)")
    e.add_argument("--repeat", type=int, default=3)
    e.add_argument("--leaderboard", default=None, help="CSV to upsert into (default leaderboards/efficiency.csv)")
    e.add_argument("--dry-run", action="store_true", help="print, write nothing")
    e.set_defaults(module="efficiency")

    c = sub.add_parser("check", help="re-run the embedded suite and compare with the committed leaderboards "
                                     "(exit 1 on a regression beyond leaderboards/tolerances.yaml)")
    c.add_argument("--suite", default=None, help="comma list: fidelity, tasks (the embedded default), headline (the "
                   "README tables' rows: headline-fidelity, headline-classification, headline-detection; they run "
                   "where the test sets / ImageNet sample / detector files are); default all")
    c.add_argument("--method", default=None, help="only these methods in every run of the suites (the rows named)")
    c.add_argument("--committed", default=None, help="folder of the boards to compare with (default leaderboards/)")
    c.add_argument("--tolerances", default=None, help="tolerance file (default leaderboards/tolerances.yaml)")
    c.add_argument("--all", action="store_true", help="print every compared value, not only regressions")
    c.set_defaults(module="check")

    cp = sub.add_parser("compare", help="a new method beside every baseline: fidelity (and task) boards + report; "
                                       "or (--rows A B) two rows of a board, paired on their images")
    cp.add_argument("--method", default=None, help="your method(s): a registered name (entry point) or "
                                                   "path/to/file.py:ClassName or package.module:ClassName")
    cr = cp.add_argument_group("two rows of a board (--rows): the paired delta A - B with its 95 % interval")
    cr.add_argument("--rows", nargs=2, metavar=("A", "B"), default=None,
                    help="two row selectors, COLUMN=VALUE lists such as 'method=fbcnn,qf=10' 'method=dagn,qf=10': "
                         "each must pick one row (a task row's metric defaults to the board's headline, e.g. top1)")
    cr.add_argument("--board", default=None, choices=["fidelity", "classification", "detection", "segmentation"],
                    help="the board the rows are on (default: the one where both selectors match)")
    cr.add_argument("--where", default=None, metavar="COLUMN=VALUE,...",
                    help="conditions both rows share, e.g. 'model=efficientnet_lite0,codec=jpeg'")
    cp.add_argument("--baselines", default="all", help="'all' (every method with shipped/found weights) or a list")
    cp.add_argument("--qf", default="10,20,30,40")
    cp.add_argument("--dataset", default="samples", help="comma list, as for `run`")
    cp.add_argument("--data-root", default=None)
    cp.add_argument("--task", default=None, help="also these downstream tasks (comma list), on the shapes set")
    cp.add_argument("--boards", "--leaderboard", dest="boards", default=None,
                    help="leaderboard folder (default $CARBENCH_RESULTS or ./carbench-results/; with --rows: the "
                         "folder or board CSV read, default leaderboards/)")
    cp.add_argument("--no-report", action="store_true")
    cp.add_argument("--quiet", action="store_true", help="no progress bars (they go to stderr)")
    cp.set_defaults(module="compare")

    rp = sub.add_parser("report", help="Markdown + static HTML leaderboard and PNG plots (leaderboards/report/)")
    rp.add_argument("--boards", default=None, help="folder of the leaderboard CSVs (default leaderboards/)")
    rp.add_argument("--out", default=None, help="output folder (default <boards>/report)")
    rp.set_defaults(module="report")

    ip = sub.add_parser("import-paper", help="copy a paper's published fidelity and classification tables into "
                                             "the leaderboards (source=paper rows, never mixed with measured ones)")
    ip.add_argument("--paper", default="dagn", help="dagn, afd, jarcal, dualpriors, ... (../shared/published)")
    ip.add_argument("--leaderboard-dir", default=None,
                    help="folder of the boards (default leaderboards/): fidelity.csv, classification.csv")
    ip.set_defaults(module="import_paper")

    mb = sub.add_parser("migrate-boards", help="fill the weights_sha256 column of boards written before it existed "
                                               "(measured rows whose weights file resolves here)")
    mb.add_argument("--leaderboard", default=None, help="folder of the boards (default leaderboards/)")
    mb.set_defaults(module="migrate_boards")

    bd = sub.add_parser("bdrate", help="BD-rate and BD-metric of every method against the unrestored input "
                                       "(rate-distortion and rate-accuracy) -> bdrate.csv")
    bd.add_argument("--boards", default=None, help="folder of the boards read (default leaderboards/)")
    bd.add_argument("--leaderboard", default=None,
                    help="folder (or CSV) written: its bdrate.csv (default $CARBENCH_RESULTS or ./carbench-results/; "
                         "the committed board: --leaderboard leaderboards/)")
    bd.add_argument("--imagenet", default=None,
                    help="ImageNet folder of the classification rows, to compute their bpp (default "
                         "$CARBENCH_IMAGENET or ../shared/data/train/ImageNet_sample1000)")
    bd.add_argument("--photos", default=None, metavar="DIR",
                    help="photo folder (or folder of folders) of the segmentation rows on photos, to compute the bpp "
                         "of the photos they scored (default $CARBENCH_DATA or ../shared/data/test)")
    bd.add_argument("--plot", default=None, metavar="DIR", help="also write the RD and rate-accuracy figures here")
    bd.add_argument("--quiet", action="store_true")
    bd.set_defaults(module="bdrate")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from benchmark.boards import provenance
    from benchmark.cli.usage import UsageError, check

    # (not `list(...)`: importing the sub-command module benchmark.cli.list rebinds `list` in this package)
    provenance.set_command([*(sys.argv[1:] if argv is None else argv)])  # each row records the command
    try:  # before the command's module (torch, Lightning, ...) is imported: a typo is answered at once
        check(args)
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    return importlib.import_module(f"benchmark.cli.{args.module}").main(args)


if __name__ == "__main__":
    sys.exit(main())
