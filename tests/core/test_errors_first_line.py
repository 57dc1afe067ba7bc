"""core.errors.first_line: the one helper that puts a failure into a one-line message."""

from sdmvae_cli.core.errors import first_line


def test_first_line_of_a_message_its_type_without_one_and_its_limit():
    assert first_line(ValueError("\n  shape mismatch\n  at layer 3")) == "shape mismatch"
    assert first_line(KeyError()) == "KeyError"  # an empty message once raised IndexError in the checkpoint reader
    assert first_line(RuntimeError("x" * 500)) == "x" * 160
    assert first_line(RuntimeError("y" * 500), 120) == "y" * 120
