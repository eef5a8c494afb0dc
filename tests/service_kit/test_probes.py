from service_kit.probes import run_check


def test_a_failing_check_reports_only_its_error_class():
    def check():
        raise ConnectionError("redis://:topsecret@host failed")

    result = run_check(check)
    assert result.ok is False
    assert result.as_dict()["error"] == "ConnectionError"
    assert "topsecret" not in str(result.as_dict())


def test_a_passing_check_reports_its_latency():
    result = run_check(lambda: None)
    assert result.ok is True
    assert result.latency_ms >= 0
    assert "error" not in result.as_dict()
