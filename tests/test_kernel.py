"""Kernel feature detection asks the kernel (a device made in a throwaway namespace)."""

from __future__ import annotations

import pytest
from conftest import needs_root

from knetlab import kernel
from knetlab.errors import UnsupportedError


@needs_root
def test_probes_this_kernel() -> None:
    # This machine's kernel: VXLAN built in, no IPIP (CONFIG_NET_IPIP is not set).
    assert kernel.can_probe()
    assert kernel.has("vxlan") and kernel.has("bridge") and kernel.has("tun")
    assert not kernel.has("ipip")
    assert "scratch network namespace" in kernel.probe("ipip").how


@needs_root
def test_require_names_the_missing_feature() -> None:
    kernel.require("vxlan", "data plane calico-vxlan")
    with pytest.raises(UnsupportedError, match="IPIP tunnels.*CONFIG_NET_IPIP"):
        kernel.require("ipip", "data plane calico-ipip")


@needs_root
def test_probes_agree_with_the_kernel_config() -> None:
    """Where /proc/config.gz exists, a built-in option must probe present; an unset one
    (no module can load it then) must probe absent."""
    conf = kernel.kernel_config()
    if not conf:
        pytest.skip("this kernel exposes no /proc/config.gz to compare with")
    for feature, (option, _) in kernel.FEATURES.items():
        if conf.get(option) == "y":
            assert kernel.has(feature), feature
        elif option not in conf:
            assert not kernel.has(feature), feature


def test_answers_are_cached() -> None:
    kernel.has("vxlan")
    hits = kernel.probe.cache_info().hits
    kernel.has("vxlan")
    assert kernel.probe.cache_info().hits == hits + 1
