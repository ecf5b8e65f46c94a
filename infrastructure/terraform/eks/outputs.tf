# What the Kustomize overlays and Helm values need (docs/install.md, step 1).
output "cluster_name" {
  value = module.eks.cluster_name
}

output "kubeconfig_command" {
  value = "aws eks update-kubeconfig --region ${var.region} --name ${module.eks.cluster_name}"
}

output "artifacts_bucket" {
  description = "MLFLOW_ARTIFACTS_DESTINATION is s3://<this>/mlartifacts; Argo's artifactRepository.s3.bucket."
  value       = aws_s3_bucket.artifacts.bucket
}

output "mlflow_db_endpoint" {
  description = "MLFLOW_DB_HOST of the overlay's llmrelease-config."
  value       = aws_db_instance.mlflow.address
}

output "mlflow_db_secret_name" {
  description = "Secrets Manager key of the mlflow-db ExternalSecret."
  value       = aws_secretsmanager_secret.mlflow_db.name
}

output "irsa_role_arns" {
  description = "eks.amazonaws.com/role-arn of each ServiceAccount (overlays; external-secrets and cluster-autoscaler values)."
  value       = { for k, role in aws_iam_role.irsa : k => role.arn }
}
