"""Preflight against the test cloud: a good site passes; a bad one gets every problem at once.

After a failing preflight the sweep finds nothing: preflight only reads.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from openstack.connection import Connection

from cidemo_infra.cloud import PreflightError, check, find, preflight
from cidemo_infra.site import Site
from tests.cloud.conftest import EXTERNAL_NETWORK, FLAVOR_TINY, IMAGE, new_public_key

pytestmark = pytest.mark.cloud

MakeSite = Callable[..., Site]


def test_a_site_that_fits_the_cloud_passes(conn: Connection, make_site: MakeSite) -> None:
    site = make_site()

    assert preflight(site, conn) == []
    check(site, conn)
    assert find(conn, site.name, key_name=site.ssh.key_name) == []


def test_missing_image_small_flavor_and_exhausted_quota_are_all_reported(
    conn: Connection, make_site: MakeSite, instance_quota: Callable[[int], None]
) -> None:
    site = make_site(
        roles={
            "deis": {"image": "ct-no-such-image"},
            "standalone": {"flavor": FLAVOR_TINY, "min_ram_mb": 2048, "min_disk_gb": 20},
        }
    )
    instance_quota(2)

    problems = preflight(site, conn)

    assert len(problems) == 3, problems
    image, flavor, quota = problems
    assert image.startswith("roles.deis.image: no image 'ct-no-such-image'")
    assert IMAGE in image
    assert flavor.startswith(f"roles.standalone.flavor: '{FLAVOR_TINY}' has only")
    assert "min_ram_mb 2048" in flavor
    assert "flavors that fit: m1.small" in flavor
    assert quota.startswith("nodes: needs 4 more instances (4 servers)")
    assert "has 2 left (quota 2, in use 0)" in quota

    with pytest.raises(PreflightError) as err:
        check(site, conn)
    assert err.value.problems == problems
    assert str(err.value) == f"{image} (+2 more)"
    assert err.value.exit_code == 1
    assert find(conn, site.name, key_name=site.ssh.key_name) == []


def test_network_problems_name_the_network_keys(conn: Connection, make_site: MakeSite) -> None:
    base = make_site()
    other = conn.network.create_network(name=f"{base.name}-other")
    conn.network.create_subnet(network_id=other.id, ip_version=4, cidr="10.250.0.0/24")
    site = make_site(
        network={"external_network": other.name, "existing_network": other.name},
    )

    problems = preflight(site, conn)

    by_key = {p.split(":", 1)[0]: p for p in problems}
    assert set(by_key) == {"network.external_network", "network.cidr"}, problems
    assert f"'{other.name}' is not an external network" in by_key["network.external_network"]
    assert EXTERNAL_NETWORK in by_key["network.external_network"]
    assert "its subnets: 10.250.0.0/24" in by_key["network.cidr"]

    gone = make_site(network={"external_network": "ct-no-such-net", "existing_network": "ct-nope"})
    keys = sorted(p.split(":", 1)[0] for p in preflight(gone, conn))
    assert keys == ["network.existing_network", "network.external_network"]


def test_a_keypair_of_the_same_name_must_hold_the_same_key(
    conn: Connection, make_site: MakeSite, public_key: str
) -> None:
    site = make_site()
    conn.compute.create_keypair(name=site.ssh.key_name, public_key=new_public_key())

    problems = preflight(site, conn)

    assert len(problems) == 1, problems
    assert problems[0].startswith(f"ssh.key_name: keypair '{site.ssh.key_name}' already exists")
    assert "different public key" in problems[0]

    conn.compute.delete_keypair(site.ssh.key_name)
    conn.compute.create_keypair(name=site.ssh.key_name, public_key=public_key)
    # the same key, but Terraform does not hold it: its create would fail with 409
    (problem,) = preflight(site, conn)
    assert problem.startswith(f"ssh.key_name: keypair '{site.ssh.key_name}' already exists")
    assert "import openstack_compute_keypair_v2.site" in problem
    # once the site's Terraform state holds it (a second provision), it is the site's own
    assert preflight(site, conn, managed_keypairs={site.ssh.key_name}) == []
