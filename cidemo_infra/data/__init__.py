"""The files the tool ships beside its code, as package data (a wheel or pipx install has them):
the OpenStack Terraform module, the nodes' cloud-config templates and the images' build contexts."""

from pathlib import Path

DATA_DIR = Path(__file__).resolve().parent
TERRAFORM_MODULE = DATA_DIR / "terraform"
CLOUD_CONFIG_TEMPLATES = DATA_DIR / "cloud-config"
IMAGES = DATA_DIR / "images"
