"""The loadtest on a Redis Cluster (``python -m loadtest --cluster``, loadtest/README.md): its
target, the server figures summed over every primary, and a small sale over many SKUs through
the client, every SKU checked for oversell."""

from __future__ import annotations

from loadtest.atp_query import AtpQueryConfig, run_atp_query
from loadtest.flash_sale import FlashSaleConfig, run_flash_sale
from loadtest.progress import bench_progress
from loadtest.server_stats import ServerMeter
from loadtest.target import CLUSTER_PRIMARIES, redis_target


def test_the_cluster_target_meters_every_primary_and_deletes_its_keys() -> None:
    with redis_target(cluster=True) as target:
        client = target.client()
        keys = [f"{target.prefix}:{{{sku}}}:x" for sku in target.skus("M", 30)]
        assert len({client.get_node_from_key(k).name for k in keys}) == CLUSTER_PRIMARIES
        with ServerMeter(client) as meter:
            for key in keys:
                client.set(key, 1)
        assert meter.result is not None and meter.result.calls("set") == len(keys)
        assert meter.result.cpu_s > 0
        assert target.cleanup() == len(keys)
        assert client.dbsize() == 0
        client.close()


def test_a_sale_over_many_skus_on_the_cluster_sells_each_out_exactly() -> None:
    cfg = FlashSaleConfig(stock=60, demand=240, callers=8, procs=1, duration_s=30, skus=30)
    with redis_target(cluster=True) as target, bench_progress(quiet=True) as progress:
        report = run_flash_sale(target, cfg, progress)
        query = run_atp_query(target, AtpQueryConfig(skus=30, queries=20, duration_s=5, profile=False), progress)
    check = report["oversell_check"]
    assert check["ok"], check["problems"]
    assert (report["successes"], report["errors"], report["error_kinds"]) == (60, 0, {})
    assert (check["stock"], report["final_position"]["held"], report["final_position"]["atp"]) == (60, 60, 0)
    assert report["refusals"] == report["attempts"] - 60 > 0
    assert report["script_calls"] >= 30  # every SKU's holds ran, on whichever primary owns it
    assert query["queries"] == 20 and query["incomplete_answers"] == 0
