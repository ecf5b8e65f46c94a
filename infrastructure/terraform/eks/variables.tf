variable "environment" {
  description = "dev, stage or prod: names every resource (llmrelease-<environment>-...)."
  type        = string

  validation {
    condition     = contains(["dev", "stage", "prod"], var.environment)
    error_message = "environment must be dev, stage or prod."
  }
}

variable "region" {
  description = "AWS region."
  type        = string
  default     = "us-east-1"
}

variable "kubernetes_version" {
  description = "EKS Kubernetes version."
  type        = string
  default     = "1.33"
}

variable "vpc_cidr" {
  description = "CIDR of the cluster's VPC."
  type        = string
  default     = "10.40.0.0/16"
}

variable "public_endpoint_cidrs" {
  description = "CIDRs allowed to reach the public Kubernetes API endpoint (empty: private endpoint only)."
  type        = list(string)
  default     = []
}

variable "cpu_instance_types" {
  description = "Instance types of the CPU node group (Argo, MLflow, steps, Ray head, monitoring)."
  type        = list(string)
  default     = ["m7i.2xlarge", "m6i.2xlarge"]
}

variable "cpu_nodes" {
  description = "Size of the CPU node group."
  type        = object({ min = number, desired = number, max = number })
  default     = { min = 2, desired = 3, max = 8 }
}

variable "gpu_instance_types" {
  description = "GPU instance types (NVIDIA L4 by default: the release specs' target_gpu). Several widen spot capacity."
  type        = list(string)
  default     = ["g6.2xlarge", "g6.4xlarge", "g6e.2xlarge"]
}

variable "gpu_spot_max" {
  description = "Most GPU spot nodes (eval workers scale 0..max with the Ray autoscaler)."
  type        = number
  default     = 4
}

variable "gpu_on_demand" {
  description = "Size of the on-demand GPU node group for serving (0 keeps it empty: serving then uses spot)."
  type        = object({ min = number, desired = number, max = number })
  default     = { min = 0, desired = 0, max = 4 }
}

variable "db_instance_class" {
  description = "RDS instance class of MLflow's PostgreSQL."
  type        = string
  default     = "db.t4g.medium"
}
