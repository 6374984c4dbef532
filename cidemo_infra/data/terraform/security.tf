locals {
  public_world_tcp_ports = {
    http  = 80
    https = 443
  }

  # git push to the Deis builder: only nodes that run the Deis v1 platform have one listening.
  deis_builder_ports = {
    deis_builder = 2222
  }

  # SSH is open to the world only when the operator named no admin CIDR.
  ssh_sources = length(var.admin_cidrs) > 0 ? var.admin_cidrs : ["0.0.0.0/0"]

  cluster_ports = {
    etcd_client         = { port = 2379, protocol = "tcp" }
    etcd_peer           = { port = 2380, protocol = "tcp" }
    docker_tls          = { port = 2376, protocol = "tcp" }
    galera_mysql        = { port = 3306, protocol = "tcp" }
    galera_sst          = { port = 4444, protocol = "tcp" }
    galera_replication  = { port = 4567, protocol = "tcp" }
    galera_ist          = { port = 4568, protocol = "tcp" }
    flannel_vxlan       = { port = 8472, protocol = "udp" }
    swarm_manager       = { port = 2377, protocol = "tcp" }
    swarm_gossip_tcp    = { port = 7946, protocol = "tcp" }
    swarm_gossip_udp    = { port = 7946, protocol = "udp" }
    swarm_overlay_vxlan = { port = 4789, protocol = "udp" }
    # apps on the Deis nodes reach the database proxy and Jenkins on the standalone node
    proxy_read_write = { port = 4006, protocol = "tcp" }
    proxy_read_only  = { port = 4008, protocol = "tcp" }
    jenkins_http     = { port = 8080, protocol = "tcp" }
  }

  # the site registry on the standalone node (sites that build): the nodes' engines pull the
  # built images and staging's database snapshots from it
  registry_ports = {
    registry = { port = var.registry_port, protocol = "tcp" }
  }
}

# delete_default_rules stays unset: the default egress rules are what lets the nodes reach out.
resource "openstack_networking_secgroup_v2" "public" {
  name        = "${var.site_name}-public"
  description = "cidemo ${var.site_name}: HTTP(S) (and git push on Deis) from the world, SSH from the admins"
  tags        = var.tags
}

resource "openstack_networking_secgroup_v2" "cluster" {
  name        = "${var.site_name}-cluster"
  description = "cidemo ${var.site_name}: etcd, Galera, flannel, Swarm between the nodes; Docker TLS also from the admins"
  tags        = var.tags
}

resource "openstack_networking_secgroup_rule_v2" "public_world" {
  for_each = merge(local.public_world_tcp_ports, var.deis_builder ? local.deis_builder_ports : {})

  description       = "${var.site_name} ${each.key} from the world"
  security_group_id = openstack_networking_secgroup_v2.public.id
  direction         = "ingress"
  ethertype         = "IPv4"
  protocol          = "tcp"
  port_range_min    = each.value
  port_range_max    = each.value
  remote_ip_prefix  = "0.0.0.0/0"
}

resource "openstack_networking_secgroup_rule_v2" "public_ssh" {
  for_each = toset(local.ssh_sources)

  description       = "${var.site_name} ssh from ${each.value}"
  security_group_id = openstack_networking_secgroup_v2.public.id
  direction         = "ingress"
  ethertype         = strcontains(each.value, ":") ? "IPv6" : "IPv4"
  protocol          = "tcp"
  port_range_min    = 22
  port_range_max    = 22
  remote_ip_prefix  = each.value
}

resource "openstack_networking_secgroup_rule_v2" "cluster_internal" {
  for_each = merge(local.cluster_ports, var.registry_port > 0 ? local.registry_ports : {})

  description       = "${var.site_name} ${each.key} between the nodes"
  security_group_id = openstack_networking_secgroup_v2.cluster.id
  direction         = "ingress"
  ethertype         = "IPv4"
  protocol          = each.value.protocol
  port_range_min    = each.value.port
  port_range_max    = each.value.port
  remote_group_id   = openstack_networking_secgroup_v2.cluster.id
}

# The operator's machine drives the engines over TLS; never from the world.
resource "openstack_networking_secgroup_rule_v2" "cluster_docker_tls_admin" {
  for_each = toset(var.admin_cidrs)

  description       = "${var.site_name} docker_tls from ${each.value}"
  security_group_id = openstack_networking_secgroup_v2.cluster.id
  direction         = "ingress"
  ethertype         = strcontains(each.value, ":") ? "IPv6" : "IPv4"
  protocol          = "tcp"
  port_range_min    = 2376
  port_range_max    = 2376
  remote_ip_prefix  = each.value
}
