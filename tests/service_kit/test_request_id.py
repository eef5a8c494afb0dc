import logging

import pytest

from service_kit.request_id import REQUEST_ID_HEADER, RequestIdLogFilter, current_request_id


@pytest.mark.django_db
def test_each_response_gets_a_fresh_request_id(client):
    first = client.get("/healthz")[REQUEST_ID_HEADER]
    second = client.get("/healthz")[REQUEST_ID_HEADER]
    assert len(first) == 32
    assert first != second


@pytest.mark.django_db
def test_a_sane_incoming_request_id_is_kept(client):
    response = client.get("/healthz", headers={REQUEST_ID_HEADER: "lb-4f2a9c1e-0001"})
    assert response[REQUEST_ID_HEADER] == "lb-4f2a9c1e-0001"


@pytest.mark.django_db
@pytest.mark.parametrize("incoming", ["x", "a b c d e f g h", "evil\nINFO forged line", "z" * 65])
def test_an_unsafe_incoming_request_id_is_replaced(client, incoming):
    response = client.get("/healthz", headers={REQUEST_ID_HEADER: incoming.replace("\n", " ")})
    assert response[REQUEST_ID_HEADER] != incoming.replace("\n", " ")
    assert len(response[REQUEST_ID_HEADER]) == 32


def test_log_records_carry_the_current_request_id():
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "message", None, None)
    token = current_request_id.set("req-12345678")
    try:
        RequestIdLogFilter().filter(record)
    finally:
        current_request_id.reset(token)
    assert record.request_id == "req-12345678"
    RequestIdLogFilter().filter(record)
    assert record.request_id == "-"
