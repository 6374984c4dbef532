# A fixture module of built-in resources only: the driver's tests run the real terraform on it.
variable "nodes" {
  type = map(object({ role = string, private_ip = string }))
}

resource "terraform_data" "node" {
  for_each = var.nodes
  input    = each.value
}

output "nodes" {
  value = { for name, n in terraform_data.node : name => merge(n.output, { name = name }) }
}
