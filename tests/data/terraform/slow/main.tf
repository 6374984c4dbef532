# A resource that takes `seconds` to create, and records the environment terraform gives its
# children: for the driver's streaming, timeout and environment tests.
variable "seconds" {
  type = number
}

resource "terraform_data" "slow" {
  input = var.seconds

  provisioner "local-exec" {
    command = "env > ${path.module}/env.txt && sleep ${var.seconds}"
  }
}
