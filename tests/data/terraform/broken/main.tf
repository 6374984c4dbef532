# A fixture module that Terraform rejects: it references an undeclared variable.
resource "terraform_data" "broken" {
  input = var.does_not_exist
}
