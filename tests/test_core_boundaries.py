"""The core never imports a host library; hosts activate only when used."""
from __future__ import annotations

import subprocess
import sys


def test_core_imports_neither_lightly_nor_solo_learn():
    code = ("import sys; import solo_surgical, solo_surgical.distill, solo_surgical.checkpoints, "
            "solo_surgical.backbones, solo_surgical.cli; "
            "bad = [m for m in sys.modules if m.split('.')[0] in ('lightly', 'solo', 'lightning', 'pytorch_lightning')]; "
            "print(','.join(bad))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "", out


def test_registry_activates_the_lightly_host():
    code = "import sys, solo_surgical; solo_surgical.method_names(); print('lightly' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "True"
