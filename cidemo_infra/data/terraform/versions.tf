terraform {
  required_version = ">= 1.5"

  required_providers {
    openstack = {
      source  = "terraform-provider-openstack/openstack"
      version = ">= 3.0, < 4.0"
    }
  }
}

# Credentials come from clouds.yaml (and secure.yaml), never from this module.
provider "openstack" {
  cloud = var.cloud
}
