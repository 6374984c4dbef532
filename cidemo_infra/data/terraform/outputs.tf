output "nodes" {
  description = "Nodes keyed by node name: name, server_name, role, private_ip, public_ip."
  value = {
    for name, node in var.nodes : name => {
      name        = name
      server_name = openstack_compute_instance_v2.node[name].name
      role        = node.role
      private_ip  = openstack_networking_port_v2.node[name].all_fixed_ips[0]
      public_ip   = openstack_networking_floatingip_associate_v2.node[name].floating_ip
    }
  }
}

output "network_id" {
  description = "ID of the network the nodes are attached to (created or existing)."
  value       = local.network_id
}

output "security_group_ids" {
  description = "IDs of the site's security groups."
  value = {
    public  = openstack_networking_secgroup_v2.public.id
    cluster = openstack_networking_secgroup_v2.cluster.id
  }
}

output "floating_ips" {
  description = "Floating IP per node name; applied first (-target) so the nodes' Docker TLS certificates can name them."
  value       = { for name, fip in openstack_networking_floatingip_v2.node : name => fip.address }
}
