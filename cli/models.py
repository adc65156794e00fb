"""``benzarr models``: the model zoo as a table."""

from __future__ import annotations

import json

import typer

from benzarr.bands import describe_presets
from benzarr_cli._common import console


def command(
    as_json: bool = typer.Option(False, "--json", help="Print the list as JSON."),
) -> None:
    """List the models `benzarr train` can build: name, parameters (43 classes, default bands), default input bands;
    then the band presets `--bands` takes (ConfigILM's names), each with its channels in order."""
    from benzarr.models import list_models, model_info  # torch: the `train` extra (main names it if missing)

    infos = [model_info(name) for name in list_models()]
    rows = [
        {
            "name": i.name,
            "parameters": i.num_params,
            "bands": ",".join(i.bands) if i.default_bands == "rgb" else f"all {i.in_channels}",
            "description": i.description,
        }
        for i in infos
    ]
    if as_json:
        console.print_json(json.dumps(rows), ensure_ascii=True)  # JSON whatever the output encoding
        return
    headers = {"name": "model", "parameters": "parameters", "bands": "default bands", "description": "description"}
    cells = [{k: (f"{r[k]:,}" if k == "parameters" else str(r[k])) for k in headers} for r in rows]
    width = {k: max(len(headers[k]), *(len(c[k]) for c in cells)) for k in headers}

    def line(c: dict[str, str]) -> str:
        return (f"{c['name']:<{width['name']}}  {c['parameters']:>{width['parameters']}}  "
                f"{c['bands']:<{width['bands']}}  {c['description']}")

    console.print(line(headers))
    for c in cells:
        console.print(line(c))
    presets = describe_presets()
    console.print("\nband presets (--bands NAME; ConfigILM 0.7.1 names and channel order):")
    name_width = max(len(name) for name, _ in presets)
    for name, bands in presets:
        console.print(f"  {name:<{name_width}}  {bands}")
