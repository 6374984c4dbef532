locals {
  create_network = var.existing_network == ""
  network_id     = local.create_network ? openstack_networking_network_v2.site[0].id : data.openstack_networking_network_v2.existing[0].id
  subnet_id      = local.create_network ? openstack_networking_subnet_v2.site[0].id : data.openstack_networking_subnet_v2.existing[0].id
}

data "openstack_networking_network_v2" "external" {
  name     = var.external_network
  external = true
}

resource "openstack_networking_network_v2" "site" {
  count = local.create_network ? 1 : 0

  name           = "${var.site_name}-net"
  admin_state_up = true
  tags           = var.tags
}

resource "openstack_networking_subnet_v2" "site" {
  count = local.create_network ? 1 : 0

  name            = "${var.site_name}-subnet"
  network_id      = openstack_networking_network_v2.site[0].id
  cidr            = var.network_cidr
  ip_version      = 4
  dns_nameservers = var.dns_nameservers
  tags            = var.tags
}

resource "openstack_networking_router_v2" "site" {
  count = local.create_network ? 1 : 0

  name                = "${var.site_name}-router"
  external_network_id = data.openstack_networking_network_v2.external.id
  tags                = var.tags
}

resource "openstack_networking_router_interface_v2" "site" {
  count = local.create_network ? 1 : 0

  router_id = openstack_networking_router_v2.site[0].id
  subnet_id = openstack_networking_subnet_v2.site[0].id
}

data "openstack_networking_network_v2" "existing" {
  count = local.create_network ? 0 : 1

  name = var.existing_network
}

# The nodes' fixed IPs are rendered inside network_cidr, so that is the subnet to use.
data "openstack_networking_subnet_v2" "existing" {
  count = local.create_network ? 0 : 1

  network_id = data.openstack_networking_network_v2.existing[0].id
  cidr       = var.network_cidr
}
