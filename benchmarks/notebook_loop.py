"""The official Kaggle notebook's checkpoint loop: its own torch ``unlearning`` against the drop-in.

Writes a synthetic competition folder (``retain.csv``/``forget.csv``/``validation.csv``, 32×32 PNGs under
``images/<person>/<n>.png``, ``original_model.pth``: a torchvision ResNet-18 given a few SGD steps), then
runs, each in a fresh Python process so that every compilation is counted, the notebook's code
(``run-unlearn-finetune.ipynb``: ``HiddenDataset``, ``get_dataset(64)`` and the checkpoint loop, verbatim
but for the data paths and the number of checkpoints):

* ``torch``     — the notebook's own ``unlearning`` (1 epoch SGD 1e-3 on the retain loader);
* ``dropin``    — the same loop with ``from jax_unlearn.kaggle import unlearning`` instead of the def;
* ``many``      — the README's loop: ``unlearning_many(net, ..., n)`` streamed into ``torch.save``.

Reported per variant: the loop's wall time from its first line to its last ``torch.save`` (so JAX's
compilation, the loaders' reads and the weight conversions are all inside), the time to import (torch
alone vs jax_unlearn), and the ratio to ``torch``. ``--repeats`` rounds run every variant back to back
(default 3); the medians are reported, and the ratio is the median of the rounds' own ratios. Every
checkpoint written is loaded back into torchvision's ``resnet18(num_classes=10)`` with ``strict=True``.

    python benchmarks/notebook_loop.py --checkpoints 8 --retain 600 --out out/benchmarks/notebook_loop
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks import common  # noqa: E402

KAGGLE_DIR = "/kaggle/input/neurips-2023-machine-unlearning/"
KAGGLE_TMP = "/kaggle/tmp"

# run-unlearn-finetune.ipynb (the competition's starter notebook), cells verbatim.
NOTEBOOK_IMPORTS = '''\
import os
import subprocess

import pandas as pd
import torch
import torchvision
import torch.nn as nn
import torch.optim as optim
from torchvision.models import resnet18
from torch.utils.data import DataLoader, Dataset

DEVICE = 'cuda' if torch.cuda.is_available() else 'cpu'
'''
NOTEBOOK_DATA = '''\
def load_example(df_row):
    image = torchvision.io.read_image(df_row['image_path'])
    result = {
        'image': image,
        'image_id': df_row['image_id'],
        'age_group': df_row['age_group'],
        'age': df_row['age'],
        'person_id': df_row['person_id']
    }
    return result


class HiddenDataset(Dataset):
    \'\'\'The hidden dataset.\'\'\'
    def __init__(self, split='train'):
        super().__init__()
        self.examples = []

        df = pd.read_csv(f'/kaggle/input/neurips-2023-machine-unlearning/{split}.csv')
        df['image_path'] = df['image_id'].apply(
            lambda x: os.path.join('/kaggle/input/neurips-2023-machine-unlearning/', 'images', x.split('-')[0], x.split('-')[1] + '.png'))
        df = df.sort_values(by='image_path')
        df.apply(lambda row: self.examples.append(load_example(row)), axis=1)
        if len(self.examples) == 0:
            raise ValueError('No examples.')

    def __len__(self):
        return len(self.examples)

    def __getitem__(self, idx):
        example = self.examples[idx]
        image = example['image']
        image = image.to(torch.float32)
        example['image'] = image
        return example


def get_dataset(batch_size):
    \'\'\'Get the dataset.\'\'\'
    retain_ds = HiddenDataset(split='retain')
    forget_ds = HiddenDataset(split='forget')
    val_ds = HiddenDataset(split='validation')

    retain_loader = DataLoader(retain_ds, batch_size=batch_size, shuffle=True)
    forget_loader = DataLoader(forget_ds, batch_size=batch_size, shuffle=True)
    validation_loader = DataLoader(val_ds, batch_size=batch_size, shuffle=True)

    return retain_loader, forget_loader, validation_loader
'''
NOTEBOOK_UNLEARNING = '''\
def unlearning(
    net,
    retain_loader,
    forget_loader,
    val_loader):
    """Simple unlearning by finetuning."""
    epochs = 1
    criterion = nn.CrossEntropyLoss()
    optimizer = optim.SGD(net.parameters(), lr=0.001,
                      momentum=0.9, weight_decay=5e-4)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
        optimizer, T_max=epochs)
    net.train()

    for ep in range(epochs):
        net.train()
        for sample in retain_loader:
            inputs = sample["image"]
            targets = sample["age_group"]
            inputs, targets = inputs.to(DEVICE), targets.to(DEVICE)

            optimizer.zero_grad()
            outputs = net(inputs)
            loss = criterion(outputs, targets)
            loss.backward()
            optimizer.step()
        scheduler.step()

    net.eval()
    return net
'''
NOTEBOOK_LOOP = '''\
os.makedirs('/kaggle/tmp', exist_ok=True)
retain_loader, forget_loader, validation_loader = get_dataset(64)
net = resnet18(weights=None, num_classes=10)
net.to(DEVICE)
for i in range(512):
    net.load_state_dict(torch.load('/kaggle/input/neurips-2023-machine-unlearning/original_model.pth'))
    net_ = unlearning(net, retain_loader, forget_loader, validation_loader)
    state = net_.state_dict()
    torch.save(state, f'/kaggle/tmp/unlearned_checkpoint_{i}.pth')
'''
# The README's unlearning_many loop, in the notebook's place.
MANY_LOOP = '''\
os.makedirs('/kaggle/tmp', exist_ok=True)
retain_loader, forget_loader, validation_loader = get_dataset(64)
net = resnet18(weights=None, num_classes=10)
net.to(DEVICE)
net.load_state_dict(torch.load('/kaggle/input/neurips-2023-machine-unlearning/original_model.pth'))
for i, state in enumerate(unlearning_many(net, retain_loader, forget_loader, validation_loader, 512)):
    torch.save(state, f'/kaggle/tmp/unlearned_checkpoint_{i}.pth')
'''
# Notes when each checkpoint is saved (the loop's code stays as it is): the first save includes compilation.
SAVE_CLOCK = '''\
_saves, _torch_save = [], torch.save
def _clocked_save(*args, **kwargs):
    _torch_save(*args, **kwargs)
    _saves.append(_time.perf_counter())
torch.save = _clocked_save
'''
VARIANTS = {
    "torch": (NOTEBOOK_UNLEARNING, NOTEBOOK_LOOP),
    "dropin": ("from jax_unlearn.kaggle import unlearning\n", NOTEBOOK_LOOP),
    "many": ("from jax_unlearn.kaggle import unlearning_many\n", MANY_LOOP),
}


def notebook_source(variant: str, folder: Path, out: Path, checkpoints: int) -> str:
    """The variant's notebook code with the competition paths pointed at ``folder``/``out``, a timer
    around the loop (``_t_loop``), and the import time (``_t_import``)."""
    define, loop = VARIANTS[variant]
    loop = loop.replace("range(512)", f"range({checkpoints})").replace(
        "validation_loader, 512)", f"validation_loader, {checkpoints})")
    code = (f"import time as _time\n_t0 = _time.perf_counter()\n{NOTEBOOK_IMPORTS}{define}"
            f"_t_import = _time.perf_counter() - _t0\n{NOTEBOOK_DATA}{SAVE_CLOCK}"
            f"_t1 = _time.perf_counter()\n{loop}_t_loop = _time.perf_counter() - _t1\n"
            "_saves = [t - _t1 for t in _saves]\n")
    return code.replace(KAGGLE_DIR, str(folder) + "/").replace(KAGGLE_TMP, str(out))


def write_folder(root: Path, retain: int, forget: int, validation: int, seed: int = 0) -> Path:
    """A synthetic competition folder (4 images per person; labels carried by the red channel so the
    model has something to learn) with a briefly trained ``original_model.pth``."""
    import numpy as np
    import pandas as pd
    import torch
    import torchvision
    from PIL import Image

    rng = np.random.default_rng(seed)
    person = 0
    for name, n in (("retain", retain), ("forget", forget), ("validation", validation)):
        rows = []
        for i in range(n):
            if i % 4 == 0:
                person += 1
                (root / "images" / str(person)).mkdir(parents=True, exist_ok=True)
            label = int(rng.integers(0, 10))
            pixels = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
            pixels[..., 0] = 20 * label
            Image.fromarray(pixels, "RGB").save(root / "images" / str(person) / f"{i % 4}.png")
            rows.append({"image_id": f"{person}-{i % 4}", "age_group": label, "age": 10 * label + 5,
                         "person_id": person})
        pd.DataFrame(rows).to_csv(root / f"{name}.csv", index=False)
    torch.manual_seed(seed)
    net = torchvision.models.resnet18(weights=None, num_classes=10).train()
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    for _ in range(3):
        x = torch.from_numpy(rng.integers(0, 256, (64, 3, 32, 32)).astype(np.float32))
        y = torch.from_numpy(rng.integers(0, 10, 64))
        opt.zero_grad()
        torch.nn.functional.cross_entropy(net(x), y).backward()
        opt.step()
    torch.save(net.state_dict(), root / "original_model.pth")
    return root


def run_variant(variant: str, folder: Path, out: Path, checkpoints: int) -> dict:
    """Run one variant in a fresh process; its timings and a strict reload of every checkpoint."""
    out.mkdir(parents=True, exist_ok=True)
    code = notebook_source(variant, folder, out, checkpoints) + (
        "import json as _json\nprint('RESULT ' + _json.dumps({'import_s': _t_import, 'loop_s': _t_loop, "
        "'first_checkpoint_s': _saves[0], 'later_checkpoint_s': (_saves[-1] - _saves[0]) / max(len(_saves) - 1, 1)}))\n")
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    total = time.perf_counter() - started
    if proc.returncode != 0:
        raise RuntimeError(f"variant {variant} failed:\n{proc.stderr[-4000:]}")
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")][-1]
    result = {**json.loads(line[len("RESULT "):]), "process_s": total}
    import torch
    import torchvision

    files = sorted(out.glob("unlearned_checkpoint_*.pth"))
    if len(files) != checkpoints:
        raise RuntimeError(f"variant {variant}: {len(files)} checkpoints written, expected {checkpoints}")
    net = torchvision.models.resnet18(weights=None, num_classes=10)
    for path in files:
        net.load_state_dict(torch.load(path, weights_only=True), strict=True)
    result["per_checkpoint_s"] = result["loop_s"] / checkpoints
    return result


TIMES = ("loop_s", "first_checkpoint_s", "later_checkpoint_s", "per_checkpoint_s", "import_s", "process_s")


def summarize(rounds: list[dict[str, dict]]) -> dict[str, dict]:
    """Per variant, the medians over ``rounds`` (each ``{variant: run_variant's result}``) of its times,
    and when ``torch`` ran, ``vs_torch``: the median of the per-round ratios of the variant's loop to
    torch's (a round's variants run back to back, so each ratio compares runs under the same machine
    load), with every round's ratio in ``vs_torch_rounds``."""
    out = {}
    for name in rounds[0]:
        result = {key: statistics.median(r[name][key] for r in rounds) for key in TIMES}
        result["rounds"] = len(rounds)
        if "torch" in rounds[0]:
            ratios = [r[name]["loop_s"] / r["torch"]["loop_s"] for r in rounds]
            result["vs_torch"], result["vs_torch_rounds"] = statistics.median(ratios), ratios
        out[name] = result
    return out


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoints", type=int, default=8)
    parser.add_argument("--retain", type=int, default=600)
    parser.add_argument("--forget", type=int, default=60)
    parser.add_argument("--validation", type=int, default=60)
    parser.add_argument("--variants", default="torch,dropin,many")
    parser.add_argument("--repeats", type=int, default=3,
                        help="rounds of all the variants, back to back; medians are reported")
    parser.add_argument("--out", default="out/benchmarks/notebook_loop", help="output prefix (.json/.md)")
    args = parser.parse_args(argv)
    variants = args.variants.split(",")
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown:
        parser.error(f"unknown variant(s) {unknown}; valid: {', '.join(VARIANTS)}")
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    load_before = os.getloadavg()
    record = {"command": common.command_line("notebook_loop.py", sys.argv[1:] if argv is None else argv),
              "date": common.utc_now(), "versions": common.versions(), "cpu": _cpu_model(),
              "cores": os.cpu_count(), "sizes": {"retain": args.retain, "forget": args.forget,
                                                 "validation": args.validation},
              "checkpoints": args.checkpoints, "rounds": []}
    with tempfile.TemporaryDirectory() as tmp:
        folder = write_folder(Path(tmp) / "data", args.retain, args.forget, args.validation)
        for r in range(args.repeats):
            results = {}
            for variant in variants:
                results[variant] = run_variant(variant, folder, Path(tmp) / f"{variant}-{r}", args.checkpoints)
                print(f"round {r}", variant, json.dumps(results[variant]), flush=True)
            record["rounds"].append(results)
    record["variants"] = summarize(record["rounds"])
    record["loadavg_before_after"] = [list(load_before), list(os.getloadavg())]
    common.write_json(args.out + ".json", record)
    rows = [(name, r["loop_s"], r["first_checkpoint_s"], r["later_checkpoint_s"], r.get("vs_torch"),
             " ".join(f"{x:.2f}" for x in r.get("vs_torch_rounds", [])), r["import_s"])
            for name, r in record["variants"].items()]
    common.write_markdown(args.out + ".md", {k: record[k] for k in ("date", "command", "cpu", "checkpoints", "sizes")},
                          common.markdown_table([f"variant (median of {args.repeats})", "loop s (incl. compile)",
                                                 "first checkpoint s", "s / later checkpoint", "× torch",
                                                 "× torch per round", "import s"], rows))
    return record


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


if __name__ == "__main__":
    main()
