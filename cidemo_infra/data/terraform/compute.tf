resource "openstack_compute_keypair_v2" "site" {
  name       = var.keypair_name
  public_key = var.ssh_public_key
}

# Keeps the Deis nodes (etcd and Galera members) on different hypervisors (soft: when it can).
resource "openstack_compute_servergroup_v2" "deis" {
  name     = "${var.site_name}-deis"
  policies = [var.deis_server_group_policy]
}

resource "openstack_networking_port_v2" "node" {
  for_each = var.nodes

  name               = "${var.site_name}-${each.key}"
  network_id         = local.network_id
  admin_state_up     = true
  security_group_ids = [openstack_networking_secgroup_v2.public.id, openstack_networking_secgroup_v2.cluster.id]
  tags               = var.tags

  fixed_ip {
    subnet_id  = local.subnet_id
    ip_address = each.value.private_ip
  }
}

resource "openstack_compute_instance_v2" "node" {
  for_each = var.nodes

  name        = "${var.site_name}-${each.key}"
  image_name  = each.value.image
  flavor_name = each.value.flavor
  key_pair    = openstack_compute_keypair_v2.site.name
  user_data   = file(each.value.user_data_file)
  tags        = var.tags

  metadata = {
    cidemo_site = var.site_name
    cidemo_role = each.value.role
  }

  network {
    port = openstack_networking_port_v2.node[each.key].id
  }

  dynamic "scheduler_hints" {
    for_each = each.value.role == "deis" ? [openstack_compute_servergroup_v2.deis.id] : []
    content {
      group = scheduler_hints.value
    }
  }

  # cloud-config runs on first boot only; a re-render (e.g. new certificate SANs) must not
  # rebuild a node and its database member.
  lifecycle {
    ignore_changes = [user_data]
  }
}

resource "openstack_networking_floatingip_v2" "node" {
  for_each = var.nodes

  pool        = var.external_network
  description = "${var.site_name}-${each.key}"
  tags        = var.tags
}

resource "openstack_networking_floatingip_associate_v2" "node" {
  for_each = var.nodes

  floating_ip = openstack_networking_floatingip_v2.node[each.key].address
  port_id     = openstack_networking_port_v2.node[each.key].id

  # The port's subnet must reach the external network before Neutron accepts the association.
  depends_on = [openstack_networking_router_interface_v2.site]
}
