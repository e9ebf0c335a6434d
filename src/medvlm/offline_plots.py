"""An HTML page template for `dvc plots show` / `dvc plots diff` that draws its charts without a network.

DVC's own page loads vega, vega-lite and vega-embed from a CDN, so offline every chart is blank. This module
writes a template with those libraries inlined (the bundle vl-convert-python ships, read from the installed
package, never downloaded); `.dvc/config` points `plots.html_template` at it.

How DVC (dvc_render.html.HTML.embed) fills a template: plain `str.replace` of the literal strings
`{plot_divs}` (required), `{scripts}` and `{refresh_tag}`; not `str.format`, so the braces of the inlined
JavaScript are safe and only those three literal strings matter. `{scripts}` is deliberately absent: for vega
plots DVC puts its CDN `<script src=...>` tags there. Each plot div's inline script calls the global
`vegaEmbed('#id', spec)` while the page is parsed, so the bundle is a classic (not module) script placed in
`<head>`, before the divs. A relative `plots.html_template` is resolved against the `.dvc/` folder.

    python -m medvlm.offline_plots --out .venv/share/medvlm/offline-plots.html
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from medvlm.io import atomic_file

# The Vega-Lite line the bundle carries: DVC's built-in plot templates declare the v5 schema.
VEGA_LITE_VERSION = "5"

# Literal strings dvc_render replaces in a template; the bundle must contain none of them.
_DVC_PLACEHOLDERS = ("{plot_divs}", "{scripts}", "{refresh_tag}")

_PAGE = """<!DOCTYPE html>
<html>
<head>
    <meta charset="utf-8">
    {refresh_tag}
    <title>DVC Plot</title>
    <!-- vega {vega}, vega-lite {vega_lite}, vega-embed {vega_embed}, inlined by medvlm.offline_plots -->
    <script type="text/javascript">
(function () {
@BUNDLE@
})();
    </script>
    <style>
        table {
            border-spacing: 15px;
        }
    </style>
</head>
<body>
    {plot_divs}
</body>
</html>
"""


def _latest_vega_lite(available: list[str], major: str) -> str:
    """The newest of vl-convert's Vega-Lite versions ('5.21', '6.4', ...) on the `major` line."""
    line = [v for v in available if v.split(".")[0].lstrip("v") == major]
    if not line:
        raise RuntimeError(f"vl-convert-python carries no Vega-Lite {major}.x (it has {', '.join(available)})")
    return max(line, key=lambda v: tuple(int(part) for part in re.findall(r"\d+", v)))


def render_template(*, vega_lite_major: str = VEGA_LITE_VERSION) -> str:
    """The template's text: DVC's page layout with vega, vega-lite and vega-embed inlined."""
    import vl_convert

    vega_lite = _latest_vega_lite(list(vl_convert.get_vegalite_versions()), vega_lite_major)
    bundle = vl_convert.javascript_bundle(vl_version=vega_lite)
    # The default snippet of javascript_bundle assigns window.vegaEmbed, which DVC's plot divs call.
    if "window.vegaEmbed" not in bundle:
        raise RuntimeError("vl_convert.javascript_bundle() no longer defines window.vegaEmbed")
    # Inside <script> these would end the element early (or switch the parser to escaped mode).
    for marker in ("</script", "<!--"):
        if marker in bundle.lower():
            raise RuntimeError(f"the Vega bundle contains {marker!r}; it cannot be inlined in a <script> element")
    for placeholder in _DVC_PLACEHOLDERS:
        if placeholder in bundle:
            raise RuntimeError(f"the Vega bundle contains DVC's placeholder {placeholder}")
    page = (
        _PAGE.replace("{vega}", vl_convert.get_vega_version())
        .replace("{vega_lite}", vega_lite)
        .replace("{vega_embed}", vl_convert.get_vega_embed_version())
    )
    return page.replace("@BUNDLE@", bundle)


def write_template(*, out: str | Path, vega_lite_major: str = VEGA_LITE_VERSION) -> Path:
    """Write the offline template to `out` atomically (a temporary file beside it, then a rename)."""
    out = Path(out)
    text = render_template(vega_lite_major=vega_lite_major)
    with atomic_file(out) as tmp:
        tmp.write_text(text, encoding="utf-8")
        tmp.chmod(0o644)  # mkstemp creates 0600; the page is no secret
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m medvlm.offline_plots",
        description="Write an HTML template for `dvc plots show` with the Vega libraries inlined (no CDN).",
    )
    parser.add_argument("--out", required=True, type=Path, help="where to write the template")
    args = parser.parse_args(argv)
    print(write_template(out=args.out))


if __name__ == "__main__":
    main()
