# STAND-IN for the OpenStack module, for the chain test only: the test OpenStack's servers do not
# boot (fake hypervisor), so nothing answers at the real module's addresses. Tests copy the real module's variables.tf beside this file, so the
# rendered tfvars must satisfy the real contract, and this module's outputs have the real
# module's exact shape. Every node's "floating IP" is this machine's loopback, where the test
# runs a Docker engine with TLS. This machine has no private network, so a node's private
# address a.b.c.N comes out as the loopback alias 127.0.0.N, where the test's etcd listens.

resource "terraform_data" "server" {
  for_each = var.nodes

  input = {
    name       = "${var.site_name}-${each.key}"
    role       = each.value.role
    private_ip = "127.0.0.${split(".", each.value.private_ip)[3]}"
    user_data  = sha256(file(each.value.user_data_file))
  }
}

resource "terraform_data" "floating_ip" {
  for_each = var.nodes
  input    = "127.0.0.1"
}

output "floating_ips" {
  value = { for name, fip in terraform_data.floating_ip : name => fip.output }
}

output "nodes" {
  value = {
    for name, server in terraform_data.server : name => {
      name        = name
      server_name = server.output.name
      role        = server.output.role
      private_ip  = server.output.private_ip
      public_ip   = "127.0.0.1"
    }
  }
}

output "network_id" {
  value = "standin-${var.site_name}"
}

output "security_group_ids" {
  value = { public = "standin-public", cluster = "standin-cluster" }
}
