"""Render a report page in headless Chromium: a screenshot, and a check that it rendered.

    python benchmarks/report_screenshot.py [runs/demo/report/index.html] [--out shot.png]

Needs the Debian package ``chromium`` (``apt-get install chromium``; not a protgo dependency,
so this is a script, not a test). Prints the page size, the number of images and how many
failed to load (an image whose naturalWidth is 0), and the screenshot's path and size; exits
1 when the page has no images, an image is broken, or the screenshot is blank.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

# Appended to a copy of the page: after load, the title says how many images failed.
PROBE = """<script>window.addEventListener('load', () => {
  const imgs = [...document.images];
  const broken = imgs.filter(i => !i.complete || i.naturalWidth === 0).length;
  const height = document.body.scrollHeight;
  document.title = `PROBE images=${imgs.length} broken=${broken} height=${height}`;
});</script>"""


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return name
    sys.exit("no chromium found: apt-get install chromium")


def run(page: Path, out: Path, width: int = 1200) -> dict:
    browser = chromium()
    flags = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
             "--virtual-time-budget=5000"]  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        probe = Path(tmp) / "probe.html"
        probe.write_text(page.read_text().replace("</body>", PROBE + "</body>"))
        dom = subprocess.run([*flags, "--dump-dom", probe.as_uri()], capture_output=True,
                             text=True, timeout=120).stdout  # fmt: skip
    found = re.search(r"PROBE images=(\d+) broken=(\d+) height=(\d+)", dom)
    if not found:
        sys.exit("chromium did not run the page's load probe")
    images, broken, height = map(int, found.groups())
    shot = [*flags, f"--window-size={width},{height + 40}", f"--screenshot={out}"]
    subprocess.run([*shot, page.resolve().as_uri()], capture_output=True, timeout=120, check=True)
    return {"images": images, "broken": broken, "height": height, "screenshot": out}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("page", nargs="?", type=Path, default=Path("runs/demo/report/index.html"))
    ap.add_argument("--out", type=Path, default=None, help="screenshot (default: beside it)")
    args = ap.parse_args()
    if not args.page.is_file():
        sys.exit(f"{args.page} not found: build a report first (protgo demo)")
    out = args.out or args.page.with_name("screenshot.png")
    r = run(args.page, out)
    size = out.stat().st_size if out.is_file() else 0
    print(f"page {args.page} ({args.page.stat().st_size / 1e6:.1f} MB): {r['images']} images, "
          f"{r['broken']} broken, {r['height']} px tall")  # fmt: skip
    print(f"screenshot {out}: {size / 1e3:.0f} kB")
    if r["images"] == 0 or r["broken"] or size < 20_000:
        sys.exit(1)


if __name__ == "__main__":
    main()
