"""The documentation (mkdocs.yml, docs/) builds with warnings as errors: every page, every API
entry it names found in the package (mkdocstrings), every docstring it renders parsed without
a warning (griffe) and every link resolved."""
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def test_the_docs_build_strict(tmp_path):
    site = tmp_path / "site"
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    assert "WARNING" not in done.stderr, done.stderr[-4000:]
    nav = yaml.safe_load((ROOT / "mkdocs.yml").read_text())["nav"]
    pages = [page for entry in nav for page in entry.values()]
    assert {p.name for p in (ROOT / "docs").glob("*.md")} == set(pages)  # no page left out of the nav
    for page in pages:
        html = site / ("index.html" if page == "index.md" else page[:-3] + "/index.html")
        assert html.is_file(), page
    # the API entries are rendered from the docstrings, signatures and all
    ops = (site / "ops" / "index.html").read_text()
    assert "sparta" in ops and "Non-finite values" in ops and "weight" in ops
    attacks = (site / "attacks" / "index.html").read_text()
    assert "APGD" in attacks and "HopSkipJump" in attacks and "eps" in attacks
    assert "distributed" in (site / "evaluation" / "index.html").read_text()
