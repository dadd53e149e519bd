from golden import ERRORS


def pytest_terminal_summary(terminalreporter):
    if ERRORS:
        terminalreporter.section("golden: worst relative L2 error per output")
        for name in sorted(ERRORS):
            terminalreporter.write_line(f"{name:48s} {ERRORS[name]:.3e}")
