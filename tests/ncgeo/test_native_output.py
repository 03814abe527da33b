"""Native solvers' own prints (SCS writes warnings to file descriptor 1) never reach the user's stdout."""

import os

from ncgeo.certify._program import native_output_silenced


def test_native_writes_are_silenced_and_descriptors_restored(capfd):
    with native_output_silenced():
        os.write(1, b"WARNING - large complementary slackness residual\n")
        os.write(2, b"native stderr\n")
    os.write(1, b"after\n")
    out, err = capfd.readouterr()
    assert out == "after\n" and err == ""


def test_disabled_silencer_lets_output_through(capfd):
    with native_output_silenced(enabled=False):
        os.write(1, b"verbose solver log\n")
    assert capfd.readouterr().out == "verbose solver log\n"
