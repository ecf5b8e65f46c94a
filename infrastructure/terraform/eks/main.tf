locals {
  name = "llmrelease-${var.environment}"
  azs  = slice(data.aws_availability_zones.available.names, 0, 3)

  gpu_labels = { "nvidia.com/gpu.present" = "true" }
  gpu_taints = {
    gpu = { key = "nvidia.com/gpu", value = "true", effect = "NO_SCHEDULE" }
  }
}

data "aws_availability_zones" "available" {
  state = "available"
}

module "vpc" {
  source  = "terraform-aws-modules/vpc/aws"
  version = "~> 5.21"

  name = local.name
  cidr = var.vpc_cidr
  azs  = local.azs

  private_subnets  = [for i, _ in local.azs : cidrsubnet(var.vpc_cidr, 4, i)]
  public_subnets   = [for i, _ in local.azs : cidrsubnet(var.vpc_cidr, 8, 48 + i)]
  database_subnets = [for i, _ in local.azs : cidrsubnet(var.vpc_cidr, 8, 56 + i)]

  enable_nat_gateway     = true
  single_nat_gateway     = var.environment != "prod"
  create_database_subnet_group = true

  public_subnet_tags  = { "kubernetes.io/role/elb" = 1 }
  private_subnet_tags = { "kubernetes.io/role/internal-elb" = 1 }
}

module "eks" {
  source  = "terraform-aws-modules/eks/aws"
  version = "~> 20.37"

  cluster_name    = local.name
  cluster_version = var.kubernetes_version

  cluster_endpoint_public_access       = length(var.public_endpoint_cidrs) > 0
  cluster_endpoint_public_access_cidrs = var.public_endpoint_cidrs
  enable_cluster_creator_admin_permissions = true
  enable_irsa                              = true

  vpc_id     = module.vpc.vpc_id
  subnet_ids = module.vpc.private_subnets

  cluster_addons = {
    coredns                = {}
    kube-proxy             = {}
    vpc-cni                = {}
    eks-pod-identity-agent = {}
    aws-ebs-csi-driver = {
      service_account_role_arn = aws_iam_role.ebs_csi.arn
    }
  }

  eks_managed_node_groups = {
    cpu = {
      ami_type       = "AL2023_x86_64_STANDARD"
      instance_types = var.cpu_instance_types
      capacity_type  = "ON_DEMAND"
      min_size       = var.cpu_nodes.min
      desired_size   = var.cpu_nodes.desired
      max_size       = var.cpu_nodes.max
      labels         = { "llmrelease.io/node-pool" = "cpu" }
    }

    # Eval workers: interruptible, so spot; a reclaimed node costs only its unfinished eval shard.
    gpu_spot = {
      ami_type       = "AL2023_x86_64_NVIDIA"
      instance_types = var.gpu_instance_types
      capacity_type  = "SPOT"
      min_size       = 0
      desired_size   = 0
      max_size       = var.gpu_spot_max
      labels         = merge(local.gpu_labels, { "llmrelease.io/node-pool" = "gpu-spot" })
      taints         = local.gpu_taints
      block_device_mappings = {
        root = {
          device_name = "/dev/xvda"
          ebs         = { volume_size = 200, volume_type = "gp3", encrypted = true, delete_on_termination = true }
        }
      }
      tags = {
        "k8s.io/cluster-autoscaler/enabled"                             = "true"
        "k8s.io/cluster-autoscaler/${local.name}"                       = "owned"
        "k8s.io/cluster-autoscaler/node-template/label/llmrelease.io/node-pool" = "gpu-spot"
        "k8s.io/cluster-autoscaler/node-template/taint/nvidia.com/gpu"  = "true:NoSchedule"
        "k8s.io/cluster-autoscaler/node-template/resources/nvidia.com/gpu" = "1"
      }
    }

    # Serving: on-demand GPUs the vLLM Deployments prefer (infrastructure/serving/vllm.yaml).
    gpu_on_demand = {
      ami_type       = "AL2023_x86_64_NVIDIA"
      instance_types = var.gpu_instance_types
      capacity_type  = "ON_DEMAND"
      min_size       = var.gpu_on_demand.min
      desired_size   = var.gpu_on_demand.desired
      max_size       = var.gpu_on_demand.max
      labels         = merge(local.gpu_labels, { "llmrelease.io/node-pool" = "gpu-on-demand" })
      taints         = local.gpu_taints
      block_device_mappings = {
        root = {
          device_name = "/dev/xvda"
          ebs         = { volume_size = 200, volume_type = "gp3", encrypted = true, delete_on_termination = true }
        }
      }
      tags = {
        "k8s.io/cluster-autoscaler/enabled"                             = "true"
        "k8s.io/cluster-autoscaler/${local.name}"                       = "owned"
        "k8s.io/cluster-autoscaler/node-template/label/llmrelease.io/node-pool" = "gpu-on-demand"
        "k8s.io/cluster-autoscaler/node-template/taint/nvidia.com/gpu"  = "true:NoSchedule"
        "k8s.io/cluster-autoscaler/node-template/resources/nvidia.com/gpu" = "1"
      }
    }
  }
}
