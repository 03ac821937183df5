import json

import pytest

from mnasnet.cli import main

import reference_tables

SIZES = {(arch, width): (params, macs) for arch, width, params, macs in reference_tables.sizes()}


@pytest.mark.parametrize(("arch", "width"), [("a1", None), ("b1", 1.3), ("small", None)])
def test_summary_json_totals_match_the_reference(arch, width, capsys):
    argv = ["summary", arch, "--json"] + (["--width", str(width)] if width else [])
    assert main(argv) == 0
    data = json.loads(capsys.readouterr().out)
    params, macs = SIZES[(arch, width)]
    assert data["params"] == params
    assert abs(data["macs"] - macs) / macs < 0.005
    assert sum(layer["params"] for layer in data["layers"]) == params  # every parameter sits in a row
    assert data["layers"][0]["output_shape"] == [data["config"]["stem_filters"], 112, 112]
    assert data["layers"][-1] == {
        "name": "classifier",
        "kind": "dense",
        "output_shape": [1000],
        "params": 1281000,
        "macs": 1280000,
    }


def test_summary_table_and_resolution(capsys):
    assert main(["summary", "a1", "--resolution", "192"]) == 0
    out = capsys.readouterr().out
    assert "MnasNet-a1 at 192x192" in out and "3.887M parameters" in out
    assert "stages.5.0.se" in out and "squeeze-excite" in out


def test_summary_of_custom_blocks_and_checkpoint(tmp_path, capsys):
    assert (
        main(
            [
                "summary",
                "custom",
                "--blocks",
                "r1_k3_s11_e1_i32_o16_noskip",
                "r2_k5_s22_e6_i16_o24_se0.25",
                "--json",
                "--num-classes",
                "10",
            ]
        )
        == 0
    )
    data = json.loads(capsys.readouterr().out)
    assert data["config"]["blocks"] == ["r1_k3_s11_e1_i32_o16_noskip", "r2_k5_s22_e6_i16_o24_se0.25"]
    from mnasnet import create_model
    from mnasnet.checkpoint import save_checkpoint

    save_checkpoint(create_model("small", width_multiplier=0.5, resolution=96), tmp_path / "m.safetensors")
    assert main(["summary", str(tmp_path / "m.safetensors")]) == 0
    assert "at 96x96" in capsys.readouterr().out


def test_summary_bad_input_is_one_line(capsys):
    assert main(["summary", "custom", "--blocks", "r1_k3_s11_e1_i32_o16_sx0.25"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown token 'sx0.25'" in err
    assert main(["summary", "a7"]) == 2
    assert "unknown architecture 'a7'" in capsys.readouterr().err
