"""open_census: one code path for a local store and a published version; clear errors."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from cellxgene_census import _release_directory

from ssl_census.census.open import open_census
from ssl_census.core.errors import UserError

DIRECTORY = {
    "stable": "V2",
    "latest": "2023-05-15",
    "V2": "2023-05-15",
    "2023-05-15": {
        "release_date": "2023-05-15", "release_build": "2023-05-15", "flags": {"lts": True},
        "soma": {"uri": "s3://cellxgene-data-public/cell-census/2023-05-15/soma/",
                 "s3_region": "us-west-2"},
        "h5ads": {"uri": "s3://cellxgene-data-public/cell-census/2023-05-15/h5ads/",
                  "s3_region": "us-west-2"},
    },
}
MIRRORS = {"default": "AWS-S3-us-west-2",
           "AWS-S3-us-west-2": {"provider": "S3", "base_uri": "s3://cellxgene-census-public/",
                                "region": "us-west-2"}}


@pytest.fixture
def release_server(monkeypatch) -> Iterator[str]:
    """The release directory and mirrors JSON served on loopback, at the URLs the package uses."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server API)
            body = json.dumps(MIRRORS if self.path.endswith("mirrors.json") else DIRECTORY)
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body.encode())

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    monkeypatch.setattr(_release_directory, "CELL_CENSUS_RELEASE_DIRECTORY_URL",
                        f"{base}/release.json")
    monkeypatch.setattr(_release_directory, "CELL_CENSUS_MIRRORS_DIRECTORY_URL",
                        f"{base}/mirrors.json")
    yield base
    server.shutdown()


def test_local_uri_opens_in_census_layout(synth_census_uri: str) -> None:
    with open_census(uri=synth_census_uri) as census:
        summary = census["census_info"]["summary"].read().concat().to_pandas()
        obs = census["census_data"]["homo_sapiens"].obs
        assert obs.count == 3_000
    assert dict(zip(summary["label"], summary["value"], strict=True))[
        "census_schema_version"] == "1.0.0"


def test_local_uri_without_a_store_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="no census store"):
        open_census(uri=tmp_path / "nothing")


def test_unknown_version_lists_the_available_ones(release_server: str) -> None:
    with pytest.raises(UserError) as err:
        open_census("2099-01-01")
    message = str(err.value)
    assert "unknown census version '2099-01-01'" in message
    assert "2023-05-15" in message and "stable" in message


def test_unreachable_release_directory_points_to_census_uri(monkeypatch) -> None:
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    monkeypatch.setattr(_release_directory, "CELL_CENSUS_RELEASE_DIRECTORY_URL",
                        f"{url}/release.json")
    monkeypatch.setattr(_release_directory, "CELL_CENSUS_MIRRORS_DIRECTORY_URL",
                        f"{url}/mirrors.json")
    with pytest.raises(UserError, match="unreachable.*--census-uri"):
        open_census("2023-05-15")
