# Every value is rendered by cidemo into cidemo.auto.tfvars.json; none has a default on purpose.

variable "site_name" {
  type        = string
  description = "Site name; the prefix of every resource name (\"<site_name>-...\")."

  validation {
    condition     = can(regex("^[a-z0-9][a-z0-9-]*$", var.site_name))
    error_message = "site_name must be lowercase letters, digits and hyphens, starting with a letter or digit."
  }
}

variable "cloud" {
  type        = string
  description = "Name of the clouds.yaml entry the provider authenticates with."
}

variable "network_cidr" {
  type        = string
  description = "IPv4 CIDR of the site's subnet (created, or looked up on existing_network)."

  validation {
    condition     = can(cidrnetmask(var.network_cidr))
    error_message = "network_cidr must be an IPv4 CIDR such as 10.42.0.0/24."
  }
}

variable "existing_network" {
  type        = string
  description = "Name of an existing network to attach the nodes to; \"\" creates a network, subnet and router."
}

variable "external_network" {
  type        = string
  description = "Name of the external network: the router gateway and the floating-IP pool."
}

variable "dns_nameservers" {
  type        = list(string)
  description = "DNS servers of a created subnet."
}

variable "admin_cidrs" {
  type        = list(string)
  description = "CIDRs allowed to reach SSH (22) and Docker TLS (2376); empty opens SSH to the world."

  validation {
    condition     = alltrue([for cidr in var.admin_cidrs : can(cidrhost(cidr, 0))])
    error_message = "Every admin_cidrs entry must be a CIDR such as 203.0.113.0/24."
  }
}

variable "deis_server_group_policy" {
  type        = string
  description = "Policy of the Deis nodes' server group: anti-affinity (every node on its own hypervisor, or the boot fails) or soft-anti-affinity (spread when the cloud can)."

  validation {
    condition     = contains(["anti-affinity", "soft-anti-affinity"], var.deis_server_group_policy)
    error_message = "deis_server_group_policy must be anti-affinity or soft-anti-affinity."
  }
}

variable "deis_builder" {
  type        = bool
  description = "Open the Deis builder's git-push port (2222) to the world: true only where the nodes run the Deis v1 platform (the coreos-legacy profile); elsewhere nothing listens there."
}

variable "registry_port" {
  type        = number
  description = "The site registry's port on the standalone node, opened between the nodes (their engines pull built images and database snapshots from it); 0 where the site places no registry (it builds no images)."
}

variable "keypair_name" {
  type        = string
  description = "Name of the Nova keypair created from ssh_public_key."
}

variable "ssh_public_key" {
  type        = string
  description = "OpenSSH public key installed on every node."
}

variable "nodes" {
  type = map(object({
    role           = string
    flavor         = string
    image          = string
    private_ip     = string
    user_data_file = string
  }))
  description = "Nodes keyed by node name: role (deis or standalone), flavor and image names, fixed IP, cloud-config path."

  validation {
    condition     = alltrue([for node in values(var.nodes) : contains(["deis", "standalone"], node.role)])
    error_message = "Every node role must be \"deis\" or \"standalone\"."
  }
}

variable "tags" {
  type        = list(string)
  description = "Tags set on every resource that supports them."
}
