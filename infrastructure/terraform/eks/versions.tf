# An EKS cluster for llmrelease: a VPC, the cluster, a CPU node group, a GPU spot node group (evals) and an
# on-demand GPU node group (serving, 0 by default), the S3 artifact bucket, MLflow's PostgreSQL (RDS), and the IAM
# roles the platform's ServiceAccounts assume (IRSA). One workspace per environment: dev, stage, prod.
#   terraform init && terraform workspace select -or-create dev && terraform apply -var-file=dev.tfvars
terraform {
  required_version = ">= 1.6.0"

  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = "~> 5.95"
    }
    random = {
      source  = "hashicorp/random"
      version = "~> 3.7"
    }
  }

  # State holds the generated database password: keep it in an encrypted, access-controlled bucket.
  backend "s3" {
    key     = "llmrelease/eks/terraform.tfstate"
    encrypt = true
  }
}

provider "aws" {
  region = var.region

  default_tags {
    tags = {
      "app.kubernetes.io/part-of" = "llmrelease"
      environment                 = var.environment
    }
  }
}
