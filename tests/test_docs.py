"""README.md, docs/ and bench/README.md: every relative link reaches a file and heading that exist, the README stays
short and shows the install line CI runs, and docs/layout.md names every module of the package."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", ROOT / "bench" / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
CODE_BLOCK = re.compile(r"^```.*?^```", re.DOTALL | re.MULTILINE)
LINK = re.compile(r"\]\(([^)\s]+)\)")


def heading_anchors(markdown: str) -> set[str]:
    """The anchors GitHub gives a page's headings: lower case, punctuation dropped, spaces as hyphens, `-1`, `-2`…
    for repeats."""
    anchors: set[str] = set()
    seen: dict[str, int] = {}
    for match in re.finditer(r"^#{1,6}\s+(.*)$", CODE_BLOCK.sub("", markdown), flags=re.MULTILINE):
        slug = re.sub(r"[^\w\- ]", "", match.group(1).strip().lower()).replace(" ", "-")
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        anchors.add(slug if count == 0 else f"{slug}-{count}")
    return anchors


def test_heading_anchors_follow_github():
    page = (
        "# Title\n## A guarantee on the leak: `--oos_recall_confidence 0.95`\n## Stage1 → Stage2\n## Title\n"
    )
    assert heading_anchors(page) == {
        "title",
        "a-guarantee-on-the-leak---oos_recall_confidence-095",
        "stage1--stage2",
        "title-1",
    }


def test_relative_links_reach_files_and_headings():
    broken = []
    for page in PAGES:
        for target in LINK.findall(CODE_BLOCK.sub("", page.read_text(encoding="utf-8"))):
            if re.match(r"[a-z]+:", target):
                continue
            path, _, anchor = target.partition("#")
            destination = (page.parent / path).resolve() if path else page
            if not destination.exists():
                broken.append(f"{page.relative_to(ROOT)}: {target} (no such file)")
            elif anchor and anchor not in heading_anchors(destination.read_text(encoding="utf-8")):
                broken.append(f"{page.relative_to(ROOT)}: {target} (no such heading)")
    assert not broken, "\n".join(broken)


def test_docs_index_links_every_page():
    index = (ROOT / "docs" / "README.md").read_text(encoding="utf-8")
    pages = {path.name for path in (ROOT / "docs").glob("*.md")} - {"README.md"}
    assert pages and all(f"]({name})" in index for name in pages), sorted(pages)


def test_readme_is_short_and_shows_the_ci_install_line():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(readme.split()) <= 2500
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    install = next(
        line.split("||")[0].strip() for line in ci.splitlines() if line.startswith("python -m pip install")
    )
    first_screen = "\n".join(readme.splitlines()[:40])
    for command in (install, "python -m pytest", "python run_finetune.py", "python run_predict.py"):
        assert command in first_screen, command


def test_layout_names_every_module():
    """Each subpackage's paragraph of the layout tree names each of its modules; the first names the top-level ones."""
    tree = CODE_BLOCK.findall((ROOT / "docs" / "layout.md").read_text(encoding="utf-8"))[0]
    paragraphs = tree.split("\n\n")
    package = ROOT / "multitask"
    sections = {"": paragraphs[0]}
    for sub in sorted(path.parent for path in package.glob("*/__init__.py")):
        found = [text for text in paragraphs if text.startswith(f"  {sub.name}/")]
        assert found, f"no paragraph for multitask/{sub.name}/"
        sections[sub.name] = found[0]
    missing = [
        str(module.relative_to(ROOT))
        for module in package.rglob("*.py")
        if module.name != "__init__.py"
        and not re.search(
            rf"\b{re.escape(module.name)}\b",
            sections[module.parent.relative_to(package).as_posix().strip(".")],
        )
    ]
    assert not missing, missing
