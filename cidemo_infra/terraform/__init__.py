"""The Terraform driver: the only place that runs terraform (or tofu)."""

from cidemo_infra.terraform.driver import PlanSummary, TerraformDriver, terraform_binary

__all__ = ["PlanSummary", "TerraformDriver", "terraform_binary"]
