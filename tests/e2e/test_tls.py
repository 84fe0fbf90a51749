"""TLS on every connection that carries it, with certificates made at test time (trustme)."""

import ssl
import urllib.error
import urllib.request

import pyarrow as pa
import pytest
import trustme

from sabot.api.stream import Stream
from sabot.cluster.client import SabotClient
from sabot.cluster.local import LocalCluster
from sabot.cluster.tls import TlsConfig
from sabot.testing import assert_tables_equal

pytestmark = pytest.mark.timeout(120)


def issue(tmp_path, *hosts, name="node"):
    """A CA, and a certificate for ``hosts`` signed by it: (ca, TlsConfig)."""
    ca = trustme.CA()
    cert = ca.issue_cert(*hosts)
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    cert.private_key_pem.write_to_path(str(tmp_path / f"{name}.key"))
    cert.cert_chain_pems[0].write_to_path(str(tmp_path / f"{name}.pem"))
    (tmp_path / f"{name}.key").chmod(0o600)
    return ca, TlsConfig(str(tmp_path / f"{name}.pem"), str(tmp_path / f"{name}.key"), str(tmp_path / "ca.pem"),
                         mutual=True)


def test_a_mutual_tls_cluster_runs_a_job_and_refuses_plain_and_certless_peers(tmp_path):
    _, tls = issue(tmp_path, "127.0.0.1", "localhost")
    table = pa.table({"key": pa.array([i % 7 for i in range(50_000)]), "value": pa.array([1.0] * 50_000)})
    graph = (Stream.from_table(table, batch_size=1000).key_by("key").aggregate({"value": ["sum", "count"]})
             .collect(name="out").to_job_graph("tls-job", default_parallelism=2, shippable=True))
    with LocalCluster(workers=2, slots_per_worker=2, tls=tls) as cluster:
        assert cluster.url.startswith("https://")
        nodes = cluster.client().nodes()["nodes"]
        assert all(n["url"].startswith("https://") for n in nodes)
        result = cluster.run(graph, timeout=60)
        expected = table.group_by("key").aggregate([("value", "sum"), ("value", "count")])
        assert_tables_equal(result.table("out"), expected, sort_by=["key"])
        # the job's tasks really spread over both workers: data crossed the TLS data plane
        wire = [t["metrics"].get("wire_bytes_received", 0) for t in cluster.job(cluster.client().jobs()[0]["job_id"])
                ["tasks"]]
        assert sum(wire) > 0
        # plain HTTP to a TLS server gets no answer
        for url in (cluster.url, nodes[0]["url"]):
            with pytest.raises((urllib.error.URLError, ConnectionError)):
                urllib.request.urlopen(url.replace("https://", "http://") + "/health", timeout=5)
        # a client that trusts the CA but has no certificate of its own is refused (mutual TLS)
        certless = ssl.create_default_context(cafile=tls.ca_file)
        request = urllib.request.Request(f"{cluster.url}/health",
                                         headers={"Authorization": f"Bearer {cluster.token}"})
        with pytest.raises((urllib.error.URLError, ssl.SSLError, ConnectionError)):
            urllib.request.urlopen(request, timeout=5, context=certless)
        # a client with a certificate from another CA is refused as well
        other_dir = tmp_path / "other"
        other_dir.mkdir()
        _, stranger = issue(other_dir, "127.0.0.1", name="stranger")
        with pytest.raises(ConnectionError):
            SabotClient(cluster.url, token=cluster.token, tls=stranger).health()


def test_tls_settings_are_checked():
    with pytest.raises(Exception, match="no file"):
        TlsConfig("/nope.pem", "/nope.key", "/nope-ca.pem")
    with pytest.raises(Exception, match="unknown tls setting"):
        TlsConfig.coerce({"cert": "x"})
    assert TlsConfig.from_env({}) is None
    with pytest.raises(Exception, match="missing SABOT_TLS_KEY"):
        TlsConfig.from_env({"SABOT_TLS_CERT": "a", "SABOT_TLS_CA": "c"})
