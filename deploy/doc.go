// Package deploy holds no code of its own: it is the home of the tests
// that check the deployment files against the code they deploy.
//
//   - docker-compose.yml at the repository root and the files under
//     compose/ load with the Compose specification's own loader, and
//     every service, port, volume and setting they name exists;
//   - each overlay of the kustomize base under k8s/ builds, decodes
//     strictly into the Kubernetes API types, and refers only to objects,
//     labels and ports that exist;
//   - in both, every MODELPORT_ variable given to a service is one that
//     service reads, taken from the services' own configuration code.
//
// healthcheck/ is the small binary the service images use as their
// container health check.
package deploy
