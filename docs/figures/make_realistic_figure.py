"""Measures the realistic phantom and draws docs/figures/realistic_phantom.png.

    python docs/figures/make_realistic_figure.py [--resolution 1.5] [--subjects 15]

Generates the subjects in memory (``tfds_ms.realistic.RealisticPhantom``, seed 0, default
difficulty) and measures, on the consensus masks as the challenges count lesions
(26-connected components): lesions per subject, each lesion's volume, the load per subject;
the inter-rater DSC, the faint lesions, the locations and the atrophy. Writes the figure
(histograms, and one FLAIR slice with its consensus mask and two raters' outlines) and
realistic_phantom.json (the numbers docs/data.md quotes), and prints a Markdown table.
"""

import argparse
import json
import pathlib
import sys
import time

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))

from tfds_ms import realistic, synth  # noqa: E402


def _percentiles(values) -> str:
    lo, mid, hi = np.percentile(values, [5, 50, 95])
    return f"{np.min(values):.3g} / {lo:.3g} / {mid:.3g} / {hi:.3g} / {np.max(values):.3g}"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--resolution", type=float, default=1.5)
    parser.add_argument("--subjects", type=int, default=15)
    args = parser.parse_args(argv)
    start = time.perf_counter()
    anatomy = synth.load_anatomy(args.resolution)
    phantom = realistic.RealisticPhantom()
    subjects = []
    for index in range(args.subjects):
        subjects.append(phantom(anatomy, index, seed=0))
        print(f"subject {index + 1}: {subjects[-1].info['consensus_lesions']} lesions, "
              f"{subjects[-1].info['lesion_ml']:.2f} mL", flush=True)
    seconds = (time.perf_counter() - start) / args.subjects
    infos = [s.info for s in subjects]
    counts = [i["consensus_lesions"] for i in infos]
    volumes = np.concatenate([i["consensus_lesion_ml_each"] for i in infos])
    loads = [i["lesion_ml"] for i in infos]
    dsc = [i["inter_rater_dsc"] for i in infos]
    locations = {loc: int(sum(i["lesions_by_location"][loc] for i in infos))
                 for loc in realistic.LOCATIONS}
    faint = sum(i["faint_lesions"] for i in infos) / sum(i["lesions"] for i in infos)
    summary = {
        "resolution_mm": args.resolution, "subjects": args.subjects,
        "difficulty": phantom.difficulty, "seconds_per_subject": round(seconds, 1),
        "lesions_per_subject": counts, "load_ml": loads, "inter_rater_dsc": dsc,
        "consensus_vs_truth_dsc": [i["consensus_vs_truth_dsc"] for i in infos],
        "lesion_ml_percentiles_0_5_50_95_100": np.percentile(volumes, [0, 5, 50, 95, 100])
        .round(4).tolist(),
        "share_of_lesions_below_0.1_ml": round(float(np.mean(volumes < 0.1)), 3),
        "designed_lesions_by_location": locations, "faint_share": round(faint, 3),
        "atrophy_mm": [i["atrophy_mm"] for i in infos],
        "centres": [i["centre"] for i in infos],
    }
    (HERE / "realistic_phantom.json").write_text(json.dumps(summary, indent=1))

    fig, axes = plt.subplots(1, 4, figsize=(15, 3.6))
    axes[0].hist(counts, bins=10, color="tab:blue")
    axes[0].set(title="lesions per subject (consensus)", xlabel="lesions", ylabel="subjects")
    axes[1].hist(volumes, bins=np.logspace(-3, 1.5, 28), color="tab:orange")
    axes[1].set(xscale="log", title="lesion volume", xlabel="mL", ylabel="lesions")
    axes[2].hist(loads, bins=np.logspace(-1, 2, 13), color="tab:green")
    axes[2].set(xscale="log", title="lesion load per subject", xlabel="mL", ylabel="subjects")
    high = subjects[synth.HIGH_LOAD_SUBJECT]
    z = int(np.argmax(high.masks["consensus"].sum((0, 1))))
    axes[3].imshow(np.rot90(high.images["flair"][:, :, z]), cmap="gray")
    for key, colour in (("consensus", "red"), ("1", "cyan"), ("2", "yellow")):
        axes[3].contour(np.rot90(high.masks[key][:, :, z]), levels=[0.5], colors=colour,
                        linewidths=0.6)
    axes[3].set_title("FLAIR, consensus (red), raters 1-2", fontsize=9)
    axes[3].set_axis_off()
    fig.suptitle(f"Realistic phantom: {args.subjects} subjects at {args.resolution:g} mm, "
                 f"difficulty {phantom.difficulty:g}; inter-rater DSC "
                 f"{np.mean(dsc):.2f} (mean of the 21 rater pairs)")
    fig.tight_layout()
    fig.savefig(HERE / "realistic_phantom.png", dpi=110)

    print("\n| property | min / 5 % / median / 95 % / max |\n|---|---|")
    print(f"| lesions per subject | {_percentiles(counts)} |")
    print(f"| lesion volume (mL) | {_percentiles(volumes)} |")
    print(f"| load per subject (mL) | {_percentiles(loads)} |")
    print(f"| inter-rater DSC | {_percentiles(dsc)} |")
    print(f"| atrophy (mm) | {_percentiles(summary['atrophy_mm'])} |")
    print(f"\nlocations {locations}, faint share {faint:.2f}, "
          f"{summary['share_of_lesions_below_0.1_ml']:.2f} of lesions < 0.1 mL, "
          f"{seconds:.1f} s per subject")


if __name__ == "__main__":
    main()
