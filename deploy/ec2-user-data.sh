#!/bin/bash
# EC2 user data for a node of an EKS cluster running our kubelet, runtime-shim and
# ipamd/vpc-cni (see docs/joining-clusters.md). Fill in the four values below (a launch
# template usually fills them from `aws eks describe-cluster`). The instance profile
# role must be mapped in the cluster's aws-auth ConfigMap (for `aws eks get-token`)
# and allowed ecr:GetAuthorizationToken (AmazonEC2ContainerRegistryReadOnly); the AMI
# needs the aws CLI.
set -euo pipefail

CLUSTER=demo
REGION=us-west-2
API_ENDPOINT=https://XXXXXXXX.gr7.us-west-2.eks.amazonaws.com
CA_DATA=LS0tLS1CRUdJTi...   # certificateAuthority.data, base64 of the PEM
CLUSTER_DNS=10.100.0.10
RELEASE_URL=https://example.com/node-runtime/node-runtime-x86_64.tar.gz

# Binaries: ours into /usr/local/bin, the reference CNI plugins vpc-cni chains
# (portmap, loopback) into /opt/cni/bin as upstream places them.
curl -fsSL "$RELEASE_URL" | tar -xz -C /usr/local/bin kubelet runtime-shim ipamd vpc-cni
install -d /opt/cni/bin
curl -fsSL https://github.com/containernetworking/plugins/releases/download/v1.4.0/cni-plugins-linux-amd64-v1.4.0.tgz |
    tar -xz -C /opt/cni/bin ./portmap ./loopback

install -d -m 700 /etc/node-runtime
cat >/etc/node-runtime/cluster.yaml <<YAML
apiServerEndpoint: $API_ENDPOINT
certificateAuthority: $CA_DATA
auth:
  exec:
    command: aws
    args: [--region, $REGION, eks, get-token, --cluster-name, $CLUSTER]
clusterDNS: [$CLUSTER_DNS]
networking: eni
cloudProvider: aws
YAML
# Writes /var/lib/kubelet/{config.yaml,kubeconfig}, /etc/kubernetes/pki/ca.crt,
# /etc/cni/net.d/10-vpc-cni.conflist and the kubelet, runtime-shim, ipamd units.
# ECR images need nothing more: the kubelet's built-in ECR provider uses the
# instance role. maxPods comes from the instance type (--cloud-provider aws).
/usr/local/bin/kubelet install --bootstrap-config /etc/node-runtime/cluster.yaml

systemctl daemon-reload
systemctl enable --now ipamd.service runtime-shim.service kubelet.service
