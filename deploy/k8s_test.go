package deploy

import (
	"fmt"
	"io/fs"
	"maps"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	autoscalingv2 "k8s.io/api/autoscaling/v2"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	"k8s.io/apimachinery/pkg/util/intstr"
	"sigs.k8s.io/kustomize/api/krusty"
	"sigs.k8s.io/kustomize/kyaml/filesys"
)

// overlays are the kustomize overlays under k8s/overlays, each a complete
// deployment.
var overlays = []string{"dev", "production"}

// namespace is where every namespaced object goes.
const namespace = "modelport"

// decoder decodes manifests strictly into the Kubernetes API types: an
// unknown or duplicated field is an error, as is a kind outside the scheme.
var decoder = func() runtime.Decoder {
	scheme := runtime.NewScheme()
	for _, add := range []func(*runtime.Scheme) error{
		corev1.AddToScheme, appsv1.AddToScheme, policyv1.AddToScheme,
		autoscalingv2.AddToScheme, networkingv1.AddToScheme,
	} {
		if err := add(scheme); err != nil {
			panic(err)
		}
	}
	return serializer.NewCodecFactory(scheme, serializer.EnableStrict).UniversalDeserializer()
}()

// cluster is one overlay's objects, decoded, by kind and name.
type cluster struct {
	overlay      string
	namespaces   map[string]*corev1.Namespace
	configMaps   map[string]*corev1.ConfigMap
	secrets      map[string]*corev1.Secret
	services     map[string]*corev1.Service
	deployments  map[string]*appsv1.Deployment
	statefulSets map[string]*appsv1.StatefulSet
	pdbs         map[string]*policyv1.PodDisruptionBudget
	hpas         map[string]*autoscalingv2.HorizontalPodAutoscaler
	policies     map[string]*networkingv1.NetworkPolicy
	ingresses    map[string]*networkingv1.Ingress
}

// workload is a Deployment or a StatefulSet: what makes pods.
type workload struct {
	kind, name string
	selector   *metav1.LabelSelector
	pod        *corev1.PodTemplateSpec
}

func (w workload) String() string { return w.kind + " " + w.name }

func (c *cluster) workloads() []workload {
	var out []workload
	for _, name := range slices.Sorted(maps.Keys(c.deployments)) {
		d := c.deployments[name]
		out = append(out, workload{"Deployment", name, d.Spec.Selector, &d.Spec.Template})
	}
	for _, name := range slices.Sorted(maps.Keys(c.statefulSets)) {
		s := c.statefulSets[name]
		out = append(out, workload{"StatefulSet", name, s.Spec.Selector, &s.Spec.Template})
	}
	return out
}

// selected returns the workloads whose pods sel selects.
func (c *cluster) selected(t *testing.T, sel *metav1.LabelSelector) []workload {
	t.Helper()
	s, err := metav1.LabelSelectorAsSelector(sel)
	if err != nil {
		t.Errorf("%s: selector %v: %v", c.overlay, sel, err)
		return nil
	}
	var out []workload
	for _, w := range c.workloads() {
		if s.Matches(labels.Set(w.pod.Labels)) {
			out = append(out, w)
		}
	}
	return out
}

// buildOverlay builds an overlay as `kubectl apply -k` would, after doing
// what its instructions say first: each secret file (secrets/<name>.env,
// secrets/nats-tls/ca.crt ...) copied from its example. It builds on an
// in-memory copy of k8s/, so files on this machine (real secrets) play no
// part.
func buildOverlay(t *testing.T, overlay string) *cluster {
	t.Helper()
	mem := filesys.MakeFsInMemory()
	err := filepath.WalkDir("k8s", func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		if strings.Contains(filepath.ToSlash(path), "/secrets/") && !strings.HasSuffix(path, ".example") && filepath.Base(path) != ".gitignore" {
			return nil // a real secret; the example stands in for it
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		if err := mem.WriteFile("/"+filepath.ToSlash(path), b); err != nil {
			return err
		}
		if real, ok := strings.CutSuffix(path, ".example"); ok {
			return mem.WriteFile("/"+filepath.ToSlash(real), b)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	res, err := krusty.MakeKustomizer(krusty.MakeDefaultOptions()).Run(mem, "/k8s/overlays/"+overlay)
	if err != nil {
		t.Fatalf("kustomize build overlays/%s: %v", overlay, err)
	}
	c := &cluster{
		overlay:      overlay,
		namespaces:   map[string]*corev1.Namespace{},
		configMaps:   map[string]*corev1.ConfigMap{},
		secrets:      map[string]*corev1.Secret{},
		services:     map[string]*corev1.Service{},
		deployments:  map[string]*appsv1.Deployment{},
		statefulSets: map[string]*appsv1.StatefulSet{},
		pdbs:         map[string]*policyv1.PodDisruptionBudget{},
		hpas:         map[string]*autoscalingv2.HorizontalPodAutoscaler{},
		policies:     map[string]*networkingv1.NetworkPolicy{},
		ingresses:    map[string]*networkingv1.Ingress{},
	}
	for _, r := range res.Resources() {
		y, err := r.AsYAML()
		if err != nil {
			t.Fatal(err)
		}
		obj, gvk, err := decoder.Decode(y, nil, nil)
		if err != nil {
			t.Errorf("overlays/%s: %s %s: %v", overlay, r.GetKind(), r.GetName(), err)
			continue
		}
		meta, ok := obj.(metav1.Object)
		if !ok {
			t.Errorf("overlays/%s: %s has no metadata", overlay, gvk)
			continue
		}
		if _, isNS := obj.(*corev1.Namespace); !isNS && meta.GetNamespace() != namespace {
			t.Errorf("overlays/%s: %s %s is in namespace %q, want %q", overlay, gvk.Kind, meta.GetName(), meta.GetNamespace(), namespace)
		}
		if meta.GetLabels()["app.kubernetes.io/part-of"] != "modelport" {
			t.Errorf("overlays/%s: %s %s lacks the part-of label", overlay, gvk.Kind, meta.GetName())
		}
		name := meta.GetName()
		dup := false
		switch o := obj.(type) {
		case *corev1.Namespace:
			_, dup = c.namespaces[name]
			c.namespaces[name] = o
		case *corev1.ConfigMap:
			_, dup = c.configMaps[name]
			c.configMaps[name] = o
		case *corev1.Secret:
			_, dup = c.secrets[name]
			c.secrets[name] = o
		case *corev1.Service:
			_, dup = c.services[name]
			c.services[name] = o
		case *appsv1.Deployment:
			_, dup = c.deployments[name]
			c.deployments[name] = o
		case *appsv1.StatefulSet:
			_, dup = c.statefulSets[name]
			c.statefulSets[name] = o
		case *policyv1.PodDisruptionBudget:
			_, dup = c.pdbs[name]
			c.pdbs[name] = o
		case *autoscalingv2.HorizontalPodAutoscaler:
			_, dup = c.hpas[name]
			c.hpas[name] = o
		case *networkingv1.NetworkPolicy:
			_, dup = c.policies[name]
			c.policies[name] = o
		case *networkingv1.Ingress:
			_, dup = c.ingresses[name]
			c.ingresses[name] = o
		default:
			t.Errorf("overlays/%s: %s %s: a kind this test does not check", overlay, gvk, name)
		}
		if dup {
			t.Errorf("overlays/%s: two %s named %s", overlay, gvk.Kind, name)
		}
	}
	return c
}

// TestKubernetes builds each overlay, decodes every object strictly into
// the Kubernetes API types, and checks that the objects fit together.
func TestKubernetes(t *testing.T) {
	for _, overlay := range overlays {
		t.Run(overlay, func(t *testing.T) {
			c := buildOverlay(t, overlay)
			if _, ok := c.namespaces[namespace]; !ok {
				t.Errorf("no Namespace %s", namespace)
			}
			c.checkWorkloads(t)
			c.checkServices(t)
			c.checkDisruption(t)
			c.checkAutoscaling(t)
			c.checkPods(t)
			c.checkSettings(t)
			c.checkNATS(t)
			c.checkNetwork(t)
			c.checkOverlay(t)
			c.checkSecurity(t)
		})
	}
}

// checkWorkloads: every Deployment and StatefulSet selects its own pods,
// and a StatefulSet's governing Service exists, is headless and selects
// them too.
func (c *cluster) checkWorkloads(t *testing.T) {
	for _, w := range c.workloads() {
		if w.selector == nil || (len(w.selector.MatchLabels) == 0 && len(w.selector.MatchExpressions) == 0) {
			t.Errorf("%s has no selector", w)
			continue
		}
		sel, err := metav1.LabelSelectorAsSelector(w.selector)
		if err != nil || !sel.Matches(labels.Set(w.pod.Labels)) {
			t.Errorf("%s: selector %v does not select its pods %v (%v)", w, w.selector, w.pod.Labels, err)
		}
		for _, other := range c.selected(t, w.selector) {
			if other.kind != w.kind || other.name != w.name {
				t.Errorf("%s's selector also selects the pods of %s", w, other)
			}
		}
	}
	for name, s := range c.statefulSets {
		svc, ok := c.services[s.Spec.ServiceName]
		if !ok {
			t.Errorf("StatefulSet %s: governing Service %q does not exist", name, s.Spec.ServiceName)
			continue
		}
		if svc.Spec.ClusterIP != corev1.ClusterIPNone {
			t.Errorf("StatefulSet %s: Service %s is not headless", name, svc.Name)
		}
		if !slices.ContainsFunc(c.selected(t, &metav1.LabelSelector{MatchLabels: svc.Spec.Selector}), func(w workload) bool { return w.name == name && w.kind == "StatefulSet" }) {
			t.Errorf("StatefulSet %s: Service %s does not select its pods", name, svc.Name)
		}
	}
}

// containerPort finds the port a Service or probe names (a name or a
// number) among a pod's containers.
func containerPort(pod *corev1.PodSpec, port intstr.IntOrString) (corev1.ContainerPort, bool) {
	for _, ctr := range pod.Containers {
		for _, p := range ctr.Ports {
			if port.Type == intstr.String && p.Name == port.StrVal || port.Type == intstr.Int && p.ContainerPort == port.IntVal {
				return p, true
			}
		}
	}
	return corev1.ContainerPort{}, false
}

// checkServices: every Service selects pods, and each of its ports
// targets a port those pods declare. Only the router may be reached from
// outside the cluster.
func (c *cluster) checkServices(t *testing.T) {
	for name, svc := range c.services {
		if len(svc.Spec.Selector) == 0 {
			t.Errorf("Service %s has no selector", name)
			continue
		}
		pods := c.selected(t, &metav1.LabelSelector{MatchLabels: svc.Spec.Selector})
		if len(pods) == 0 {
			t.Errorf("Service %s selects no pods (%v)", name, svc.Spec.Selector)
		}
		for _, p := range svc.Spec.Ports {
			target := p.TargetPort
			if target.Type == intstr.Int && target.IntVal == 0 {
				target = intstr.FromInt32(p.Port)
			}
			for _, w := range pods {
				if _, ok := containerPort(&w.pod.Spec, target); !ok {
					t.Errorf("Service %s port %s targets %s, which %s does not declare", name, p.Name, target.String(), w)
				}
			}
		}
		if svc.Spec.Type == corev1.ServiceTypeLoadBalancer || svc.Spec.Type == corev1.ServiceTypeNodePort || len(svc.Spec.ExternalIPs) > 0 {
			for _, w := range pods {
				if w.name != "router" {
					t.Errorf("Service %s (%s) makes %s public; only the router may be", name, svc.Spec.Type, w)
				}
			}
		}
	}
	for name, ing := range c.ingresses {
		for _, r := range ing.Spec.Rules {
			if r.HTTP == nil {
				continue
			}
			for _, p := range r.HTTP.Paths {
				if b := p.Backend.Service; b == nil || c.services[b.Name] == nil ||
					slices.ContainsFunc(c.selected(t, &metav1.LabelSelector{MatchLabels: c.services[b.Name].Spec.Selector}), func(w workload) bool { return w.name != "router" }) {
					t.Errorf("Ingress %s routes %s to something other than the router", name, p.Path)
				}
			}
		}
	}
}

// checkDisruption: every workload has a PodDisruptionBudget, and each
// budget selects pods.
func (c *cluster) checkDisruption(t *testing.T) {
	covered := map[string]bool{}
	for name, pdb := range c.pdbs {
		pods := c.selected(t, pdb.Spec.Selector)
		if len(pods) == 0 {
			t.Errorf("PodDisruptionBudget %s selects no pods", name)
		}
		for _, w := range pods {
			covered[w.String()] = true
		}
	}
	for _, w := range c.workloads() {
		if !covered[w.String()] {
			t.Errorf("%s has no PodDisruptionBudget", w)
		}
	}
}

// checkAutoscaling: each HorizontalPodAutoscaler scales a Deployment that
// leaves its replica count to it, on resources its containers request;
// the router has one.
func (c *cluster) checkAutoscaling(t *testing.T) {
	if _, ok := c.hpas["router"]; !ok {
		t.Error("no HorizontalPodAutoscaler for the router")
	}
	for name, h := range c.hpas {
		ref := h.Spec.ScaleTargetRef
		d, ok := c.deployments[ref.Name]
		if ref.Kind != "Deployment" || ref.APIVersion != "apps/v1" || !ok {
			t.Errorf("HorizontalPodAutoscaler %s scales %s %s, which does not exist", name, ref.Kind, ref.Name)
			continue
		}
		if d.Spec.Replicas != nil {
			t.Errorf("Deployment %s sets replicas, which its HorizontalPodAutoscaler owns", d.Name)
		}
		if h.Spec.MinReplicas == nil || *h.Spec.MinReplicas < 1 || *h.Spec.MinReplicas > h.Spec.MaxReplicas {
			t.Errorf("HorizontalPodAutoscaler %s: replicas %v to %d", name, h.Spec.MinReplicas, h.Spec.MaxReplicas)
		}
		if len(h.Spec.Metrics) == 0 {
			t.Errorf("HorizontalPodAutoscaler %s has no metric", name)
		}
		for _, m := range h.Spec.Metrics {
			if m.Type != autoscalingv2.ResourceMetricSourceType || m.Resource == nil {
				continue
			}
			for _, ctr := range d.Spec.Template.Spec.Containers {
				if _, ok := ctr.Resources.Requests[m.Resource.Name]; !ok {
					t.Errorf("HorizontalPodAutoscaler %s scales on %s, which container %s does not request", name, m.Resource.Name, ctr.Name)
				}
			}
		}
	}
}

// checkPods: what every pod refers to exists (ConfigMaps, Secrets and
// their keys, volumes, probe ports); every container has probes and
// resources; every pod runs as non-root without privileges.
func (c *cluster) checkPods(t *testing.T) {
	for _, w := range c.workloads() {
		spec := &w.pod.Spec
		volumes := map[string]corev1.Volume{}
		for _, v := range spec.Volumes {
			volumes[v.Name] = v
			switch {
			case v.ConfigMap != nil:
				c.needConfigMap(t, w, v.ConfigMap.Name, v.ConfigMap.Optional, itemKeys(v.ConfigMap.Items)...)
			case v.Secret != nil:
				c.needSecret(t, w, v.Secret.SecretName, v.Secret.Optional, itemKeys(v.Secret.Items)...)
			case v.Projected != nil:
				for _, src := range v.Projected.Sources {
					if src.ConfigMap != nil {
						c.needConfigMap(t, w, src.ConfigMap.Name, src.ConfigMap.Optional, itemKeys(src.ConfigMap.Items)...)
					}
					if src.Secret != nil {
						c.needSecret(t, w, src.Secret.Name, src.Secret.Optional, itemKeys(src.Secret.Items)...)
					}
				}
			case v.HostPath != nil:
				t.Errorf("%s mounts host path %s", w, v.HostPath.Path)
			}
		}
		claims := map[string]bool{}
		if s, ok := c.statefulSets[w.name]; ok && w.kind == "StatefulSet" {
			for _, pvc := range s.Spec.VolumeClaimTemplates {
				claims[pvc.Name] = true
			}
		}
		for _, ps := range spec.ImagePullSecrets {
			c.needSecret(t, w, ps.Name, nil)
		}
		if spec.AutomountServiceAccountToken == nil || *spec.AutomountServiceAccountToken {
			t.Errorf("%s mounts a service account token it does not use", w)
		}
		psc := spec.SecurityContext
		if psc == nil || psc.RunAsNonRoot == nil || !*psc.RunAsNonRoot || psc.RunAsUser == nil || *psc.RunAsUser == 0 {
			t.Errorf("%s does not run as a non-root user", w)
		}
		if psc == nil || psc.SeccompProfile == nil || psc.SeccompProfile.Type != corev1.SeccompProfileTypeRuntimeDefault {
			t.Errorf("%s has no RuntimeDefault seccomp profile", w)
		}
		for i, ctr := range append(slices.Clone(spec.InitContainers), spec.Containers...) {
			where := fmt.Sprintf("%s container %s", w, ctr.Name)
			for _, ef := range ctr.EnvFrom {
				if ef.ConfigMapRef != nil {
					c.needConfigMap(t, w, ef.ConfigMapRef.Name, ef.ConfigMapRef.Optional)
				}
				if ef.SecretRef != nil {
					c.needSecret(t, w, ef.SecretRef.Name, ef.SecretRef.Optional)
				}
			}
			for _, e := range ctr.Env {
				if e.ValueFrom == nil {
					continue
				}
				if r := e.ValueFrom.ConfigMapKeyRef; r != nil {
					c.needConfigMap(t, w, r.Name, r.Optional, r.Key)
				}
				if r := e.ValueFrom.SecretKeyRef; r != nil {
					c.needSecret(t, w, r.Name, r.Optional, r.Key)
				}
			}
			for _, m := range ctr.VolumeMounts {
				if _, ok := volumes[m.Name]; !ok && !claims[m.Name] {
					t.Errorf("%s mounts volume %s, which the pod does not have", where, m.Name)
				}
			}
			sc := ctr.SecurityContext
			if sc == nil || sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation || (sc.Privileged != nil && *sc.Privileged) {
				t.Errorf("%s may escalate privileges", where)
			}
			if sc == nil || sc.Capabilities == nil || !slices.Contains(sc.Capabilities.Drop, "ALL") || len(sc.Capabilities.Add) > 0 {
				t.Errorf("%s does not drop every capability", where)
			}
			if i < len(spec.InitContainers) {
				continue
			}
			for _, r := range []corev1.ResourceName{corev1.ResourceCPU, corev1.ResourceMemory} {
				if _, ok := ctr.Resources.Requests[r]; !ok {
					t.Errorf("%s requests no %s", where, r)
				}
				if _, ok := ctr.Resources.Limits[r]; !ok && r == corev1.ResourceMemory {
					t.Errorf("%s has no %s limit", where, r)
				}
			}
			if ctr.ReadinessProbe == nil || ctr.LivenessProbe == nil {
				t.Errorf("%s lacks a readiness or liveness probe", where)
			}
			for kind, p := range map[string]*corev1.Probe{"startup": ctr.StartupProbe, "readiness": ctr.ReadinessProbe, "liveness": ctr.LivenessProbe} {
				if p == nil {
					continue
				}
				var port *intstr.IntOrString
				switch {
				case p.HTTPGet != nil:
					port = &p.HTTPGet.Port
				case p.TCPSocket != nil:
					port = &p.TCPSocket.Port
				case p.GRPC != nil:
					port = &intstr.IntOrString{IntVal: p.GRPC.Port}
				}
				if port == nil {
					continue
				}
				if _, ok := containerPort(&corev1.PodSpec{Containers: []corev1.Container{ctr}}, *port); !ok {
					t.Errorf("%s: %s probe port %s is not one the container declares", where, kind, port.String())
				}
			}
		}
	}
}

func itemKeys(items []corev1.KeyToPath) []string {
	var keys []string
	for _, it := range items {
		keys = append(keys, it.Key)
	}
	return keys
}

func (c *cluster) needConfigMap(t *testing.T, w workload, name string, optional *bool, keys ...string) {
	t.Helper()
	cm, ok := c.configMaps[name]
	if !ok {
		if optional == nil || !*optional {
			t.Errorf("%s refers to ConfigMap %s, which does not exist", w, name)
		}
		return
	}
	for _, k := range keys {
		_, inData := cm.Data[k]
		_, inBinary := cm.BinaryData[k]
		if !inData && !inBinary {
			t.Errorf("%s refers to key %s of ConfigMap %s, which has no such key", w, k, name)
		}
	}
}

func (c *cluster) needSecret(t *testing.T, w workload, name string, optional *bool, keys ...string) {
	t.Helper()
	s, ok := c.secrets[name]
	if !ok {
		if optional == nil || !*optional {
			t.Errorf("%s refers to Secret %s, which does not exist", w, name)
		}
		return
	}
	for _, k := range keys {
		_, inData := s.Data[k]
		_, inString := s.StringData[k]
		if !inData && !inString {
			t.Errorf("%s refers to key %s of Secret %s, which has no such key", w, k, name)
		}
	}
}

// env is what a container's environment holds: each name with its value,
// resolved from ConfigMaps and Secrets, or a marker for the downward API.
type env map[string]string

func (c *cluster) containerEnv(ctr corev1.Container) env {
	out := env{}
	for _, ef := range ctr.EnvFrom {
		if ef.ConfigMapRef != nil {
			if cm := c.configMaps[ef.ConfigMapRef.Name]; cm != nil {
				maps.Copy(out, cm.Data)
			}
		}
		if ef.SecretRef != nil {
			if s := c.secrets[ef.SecretRef.Name]; s != nil {
				for k, v := range s.Data {
					out[ef.Prefix+k] = string(v)
				}
			}
		}
	}
	for _, e := range ctr.Env {
		switch {
		case e.ValueFrom == nil:
			out[e.Name] = e.Value
		case e.ValueFrom.ConfigMapKeyRef != nil:
			if cm := c.configMaps[e.ValueFrom.ConfigMapKeyRef.Name]; cm != nil {
				out[e.Name] = cm.Data[e.ValueFrom.ConfigMapKeyRef.Key]
			}
		case e.ValueFrom.SecretKeyRef != nil:
			if s := c.secrets[e.ValueFrom.SecretKeyRef.Name]; s != nil {
				out[e.Name] = string(s.Data[e.ValueFrom.SecretKeyRef.Key])
			}
		case e.ValueFrom.FieldRef != nil:
			out[e.Name] = "fieldRef:" + e.ValueFrom.FieldRef.FieldPath
		default:
			out[e.Name] = "resourceFieldRef"
		}
	}
	return out
}

// natsServers returns the NATS StatefulSet: the workload whose image is
// nats.
func (c *cluster) natsServers(t *testing.T) *appsv1.StatefulSet {
	t.Helper()
	var found *appsv1.StatefulSet
	for _, s := range c.statefulSets {
		if strings.HasPrefix(s.Spec.Template.Spec.Containers[0].Image, "nats:") {
			if found != nil {
				t.Fatalf("two NATS StatefulSets: %s and %s", found.Name, s.Name)
			}
			found = s
		}
	}
	if found == nil {
		t.Fatal("no NATS StatefulSet")
	}
	return found
}

// resolve finds the workload and container port a host:port in the
// namespace reaches: a Service and one of its ports, or one pod of a
// StatefulSet by its stable name (<statefulset>-<n>.<governing service>).
func (c *cluster) resolve(host, port string) (workload, corev1.ContainerPort, error) {
	n, err := strconv.Atoi(port)
	if err != nil {
		return workload{}, corev1.ContainerPort{}, fmt.Errorf("port %q", port)
	}
	parts := strings.Split(strings.TrimSuffix(host, "."+namespace+".svc.cluster.local"), ".")
	if len(parts) > 2 || (len(parts) == 2 && parts[1] == namespace) {
		parts = parts[:1]
	}
	if len(parts) == 1 {
		svc, ok := c.services[parts[0]]
		if !ok {
			return workload{}, corev1.ContainerPort{}, fmt.Errorf("no Service %s", parts[0])
		}
		for _, p := range svc.Spec.Ports {
			if p.Port != int32(n) {
				continue
			}
			for _, w := range c.workloads() {
				if labels.SelectorFromSet(svc.Spec.Selector).Matches(labels.Set(w.pod.Labels)) {
					if cp, ok := containerPort(&w.pod.Spec, p.TargetPort); ok {
						return w, cp, nil
					}
				}
			}
		}
		return workload{}, corev1.ContainerPort{}, fmt.Errorf("Service %s has no port %d reaching a pod", svc.Name, n)
	}
	for name, s := range c.statefulSets {
		ordinal, ok := strings.CutPrefix(parts[0], name+"-")
		i, err := strconv.Atoi(ordinal)
		if !ok || err != nil || parts[1] != s.Spec.ServiceName {
			continue
		}
		if s.Spec.Replicas == nil || int32(i) >= *s.Spec.Replicas {
			return workload{}, corev1.ContainerPort{}, fmt.Errorf("%s names pod %d of %s, which has %d", host, i, name, ptrValue(s.Spec.Replicas))
		}
		w := workload{"StatefulSet", name, s.Spec.Selector, &s.Spec.Template}
		if cp, ok := containerPort(&s.Spec.Template.Spec, intstr.FromInt(n)); ok {
			return w, cp, nil
		}
		return workload{}, corev1.ContainerPort{}, fmt.Errorf("%s declares no port %d", name, n)
	}
	return workload{}, corev1.ContainerPort{}, fmt.Errorf("%s is no StatefulSet pod", host)
}

// checkSettings: each Modelport container gets only MODELPORT_ settings
// its service reads and every one it needs, with values that reach what
// they name.
func (c *cluster) checkSettings(t *testing.T) {
	nats := c.natsServers(t)
	seen := map[string]int{}
	for _, w := range c.workloads() {
		for _, ctr := range w.pod.Spec.Containers {
			where := fmt.Sprintf("%s container %s", w, ctr.Name)
			svc, ok := serviceOf(ctr.Image)
			if !ok {
				t.Errorf("%s runs unknown Modelport image %s", where, ctr.Image)
			}
			if svc == "" {
				continue
			}
			seen[svc]++
			e := c.containerEnv(ctr)
			names := map[string]bool{}
			for k := range e {
				names[k] = true
			}
			checkEnv(t, where, svc, names)

			host, port, err := net.SplitHostPort(e["MODELPORT_HTTP_ADDR"])
			if err != nil || host != "" {
				t.Errorf("%s: MODELPORT_HTTP_ADDR %q, want \":<port>\"", where, e["MODELPORT_HTTP_ADDR"])
			} else if cp, ok := containerPort(&corev1.PodSpec{Containers: []corev1.Container{ctr}}, intstr.FromString("http")); !ok || strconv.Itoa(int(cp.ContainerPort)) != port {
				t.Errorf("%s listens on %s; its http port is %d", where, port, cp.ContainerPort)
			}

			urls := strings.Split(e["MODELPORT_NATS_URL"], ",")
			for _, raw := range urls {
				u, err := url.Parse(raw)
				if err != nil || u.Scheme != "nats" && u.Scheme != "tls" {
					t.Errorf("%s: %q is not a nats:// or tls:// URL", where, raw)
					continue
				}
				target, cp, err := c.resolve(u.Hostname(), u.Port())
				if err != nil {
					t.Errorf("%s: NATS URL %s: %v", where, raw, err)
				} else if target.name != nats.Name || cp.Name != "client" {
					t.Errorf("%s: NATS URL %s reaches %s port %s, not a NATS client port", where, raw, target, cp.Name)
				}
			}
			if len(urls) != int(*nats.Spec.Replicas) {
				t.Errorf("%s lists %d NATS servers of %d", where, len(urls), *nats.Spec.Replicas)
			}
			if r := e["MODELPORT_JETSTREAM_REPLICAS"]; r != strconv.Itoa(int(*nats.Spec.Replicas)) {
				t.Errorf("%s: MODELPORT_JETSTREAM_REPLICAS %q on %d NATS servers", where, r, *nats.Spec.Replicas)
			}

			switch svc {
			case "deployer":
				if key := e["MODELPORT_ADMIN_KEY"]; !strings.HasPrefix(key, "mp-") || len(key) < 19 {
					t.Errorf("%s: the admin key is not an mp- key", where)
				}
			case "billing":
				host, port, _ := net.SplitHostPort(e["MODELPORT_CLICKHOUSE_ADDR"])
				target, cp, err := c.resolve(host, port)
				if err != nil {
					t.Errorf("%s: MODELPORT_CLICKHOUSE_ADDR %s: %v", where, e["MODELPORT_CLICKHOUSE_ADDR"], err)
				} else if native := map[string]int32{"": 9000, "1": 9440}[e["MODELPORT_CLICKHOUSE_TLS"]]; !strings.HasPrefix(target.pod.Spec.Containers[0].Image, "clickhouse/") || cp.ContainerPort != native {
					t.Errorf("%s: MODELPORT_CLICKHOUSE_ADDR reaches %s port %d, not ClickHouse's Native port", where, target, cp.ContainerPort)
				}
			case "inference-worker":
				c.checkWorker(t, w, ctr, e)
			}
		}
	}
	for _, svc := range services {
		if seen[svc] == 0 {
			t.Errorf("no %s", svc)
		}
	}
}

// checkWorker: a worker pod is one worker, named after the pod and
// reached at its IP, with instance ports the router may use; a worker with
// GPUs runs on a GPU node and hands out exactly the GPUs it was given.
func (c *cluster) checkWorker(t *testing.T, w workload, ctr corev1.Container, e env) {
	where := fmt.Sprintf("%s container %s", w, ctr.Name)
	for name, want := range map[string]string{
		"MODELPORT_WORKER_ID":             "fieldRef:metadata.name",
		"MODELPORT_WORKER_ADVERTISE_HOST": "fieldRef:status.podIP",
		"MODELPORT_WORKER_LISTEN_HOST":    "0.0.0.0",
	} {
		if e[name] != want {
			t.Errorf("%s: %s = %q, want %q", where, name, e[name], want)
		}
	}
	first, last, err := portRange(e["MODELPORT_WORKER_PORTS"])
	if err != nil {
		t.Errorf("%s: %v", where, err)
	}
	if n, err := strconv.Atoi(e["MODELPORT_WORKER_CAPACITY"]); err != nil || n < 1 || n > last-first+1 {
		t.Errorf("%s: capacity %q for %d ports", where, e["MODELPORT_WORKER_CAPACITY"], last-first+1)
	}
	gpus := ctr.Resources.Limits["nvidia.com/gpu"]
	if gpus.IsZero() {
		if g := e["MODELPORT_WORKER_GPUS"]; g != "" && g != "0" {
			t.Errorf("%s: MODELPORT_WORKER_GPUS %s without a GPU", where, g)
		}
		return
	}
	if e["MODELPORT_WORKER_GPUS"] != gpus.String() {
		t.Errorf("%s: MODELPORT_WORKER_GPUS %q, but the container gets %s GPUs", where, e["MODELPORT_WORKER_GPUS"], gpus.String())
	}
	if e["MODELPORT_WORKER_ENGINES"] == "" {
		t.Errorf("%s has GPUs and no real engine (MODELPORT_WORKER_ENGINES)", where)
	}
	if req := ctr.Resources.Requests["nvidia.com/gpu"]; !req.Equal(gpus) {
		t.Errorf("%s requests %s GPUs, limit %s", where, req.String(), gpus.String())
	}
	spec := w.pod.Spec
	if spec.NodeSelector["nvidia.com/gpu.present"] != "true" && spec.Affinity == nil {
		t.Errorf("%s: the pod does not select GPU nodes", where)
	}
	if !slices.ContainsFunc(spec.Tolerations, func(tol corev1.Toleration) bool { return tol.Key == "nvidia.com/gpu" }) {
		t.Errorf("%s: the pod does not tolerate the GPU nodes' taint", where)
	}
}

func ptrValue(p *int32) int32 {
	if p == nil {
		return 1 // the API's default
	}
	return *p
}

func portRange(r string) (first, last int, err error) {
	a, b, ok := strings.Cut(r, "-")
	first, err1 := strconv.Atoi(a)
	last, err2 := strconv.Atoi(b)
	if !ok || err1 != nil || err2 != nil || first < 1 || last < first {
		return 0, 0, fmt.Errorf("port range %q", r)
	}
	return first, last, nil
}

// checkNATS: the NATS servers form one cluster of all the StatefulSet's
// pods, listening on the ports the pods declare, storing on their volume,
// and run the NATS version the tests run.
func (c *cluster) checkNATS(t *testing.T) {
	s := c.natsServers(t)
	spec := s.Spec.Template.Spec
	var conf string
	for _, v := range spec.Volumes {
		if v.ConfigMap != nil && c.configMaps[v.ConfigMap.Name] != nil && c.configMaps[v.ConfigMap.Name].Data["nats.conf"] != "" {
			conf = c.configMaps[v.ConfigMap.Name].Data["nats.conf"]
		}
	}
	if conf == "" {
		t.Fatal("NATS has no nats.conf")
	}
	for name, pattern := range map[string]string{
		"client":  `(?m)^\s*listen:\s*0\.0\.0\.0:(\d+)`,
		"monitor": `(?m)^\s*http:\s*0\.0\.0\.0:(\d+)`,
		"cluster": `(?s)cluster\s*\{.*?listen:\s*0\.0\.0\.0:(\d+)`,
	} {
		m := regexp.MustCompile(pattern).FindStringSubmatch(conf)
		cp, ok := containerPort(&spec, intstr.FromString(name))
		if m == nil || !ok || m[1] != strconv.Itoa(int(cp.ContainerPort)) {
			t.Errorf("nats.conf %s port %v, container port %d", name, m, cp.ContainerPort)
		}
	}
	for i := range int(*s.Spec.Replicas) {
		route := fmt.Sprintf("nats://%s-%d.%s:6222", s.Name, i, s.Spec.ServiceName)
		if !strings.Contains(conf, route) {
			t.Errorf("nats.conf has no route to %s", route)
		}
	}
	store := regexp.MustCompile(`store_dir:\s*(\S+)`).FindStringSubmatch(conf)
	if store == nil || !slices.ContainsFunc(spec.Containers[0].VolumeMounts, func(m corev1.VolumeMount) bool {
		return m.MountPath == store[1] && slices.ContainsFunc(s.Spec.VolumeClaimTemplates, func(p corev1.PersistentVolumeClaim) bool { return p.Name == m.Name })
	}) {
		t.Errorf("JetStream store %v is not on the pods' own volume", store)
	}
	if *s.Spec.Replicas != 3 {
		t.Errorf("%d NATS servers, want 3", *s.Spec.Replicas)
	}
	if want := "nats:" + natsVersion(t) + "-alpine"; spec.Containers[0].Image != want {
		t.Errorf("NATS image %s, want %s: the version the tests run", spec.Containers[0].Image, want)
	}
}

// clickhousePort is the port billing reaches ClickHouse on: the Native
// protocol's, over TLS where the overlay turns it on.
func (c *cluster) clickhousePort(t *testing.T) int32 {
	t.Helper()
	e := c.containerEnv(c.deployments["billing"].Spec.Template.Spec.Containers[0])
	_, port, _ := net.SplitHostPort(e["MODELPORT_CLICKHOUSE_ADDR"])
	p, err := strconv.Atoi(port)
	if err != nil {
		t.Fatalf("billing's MODELPORT_CLICKHOUSE_ADDR %q", e["MODELPORT_CLICKHOUSE_ADDR"])
	}
	return int32(p)
}

// natsVersion is the nats-server version the end-to-end tests build and
// run (cmd/modelport's go.mod), without its "v".
func natsVersion(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(repoRoot, "cmd", "modelport", "go.mod"))
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`github\.com/nats-io/nats-server/v2 v(\d+\.\d+\.\d+)`).FindSubmatch(b)
	if m == nil {
		t.Fatal("cmd/modelport/go.mod does not require nats-server")
	}
	return string(m[1])
}

// peer is one end of a connection for checkNetwork: a pod of a workload,
// or (nil) a client outside the namespace.
type peer *workload

// allows reports whether the NetworkPolicies let from connect to a pod of
// to on port, as a network plugin enforcing them would.
func (c *cluster) allows(t *testing.T, from peer, to workload, port int32) bool {
	var isolating []*networkingv1.NetworkPolicy
	for _, p := range c.policies {
		if !slices.Contains(p.Spec.PolicyTypes, networkingv1.PolicyTypeIngress) {
			continue
		}
		if sel, err := metav1.LabelSelectorAsSelector(&p.Spec.PodSelector); err == nil && sel.Matches(labels.Set(to.pod.Labels)) {
			isolating = append(isolating, p)
		}
	}
	if len(isolating) == 0 {
		return true
	}
	for _, p := range isolating {
		for _, rule := range p.Spec.Ingress {
			if !c.peerMatches(t, rule.From, from) || !portMatches(rule.Ports, to, port) {
				continue
			}
			return true
		}
	}
	return false
}

func (c *cluster) peerMatches(t *testing.T, peers []networkingv1.NetworkPolicyPeer, from peer) bool {
	if len(peers) == 0 {
		return true
	}
	for _, p := range peers {
		switch {
		case p.IPBlock != nil:
			if from == nil {
				return true
			}
		case p.NamespaceSelector != nil:
			// Pods of other namespaces: outside Modelport.
			if from == nil {
				return true
			}
		case p.PodSelector != nil && from != nil:
			sel, err := metav1.LabelSelectorAsSelector(p.PodSelector)
			if err != nil {
				t.Errorf("selector %v: %v", p.PodSelector, err)
			} else if sel.Matches(labels.Set(from.pod.Labels)) {
				return true
			}
		}
	}
	return false
}

func portMatches(ports []networkingv1.NetworkPolicyPort, to workload, port int32) bool {
	if len(ports) == 0 {
		return true
	}
	for _, p := range ports {
		switch {
		case p.Port == nil:
			return true
		case p.Port.Type == intstr.String:
			if cp, ok := containerPort(&to.pod.Spec, *p.Port); ok && cp.ContainerPort == port {
				return true
			}
		case p.EndPort != nil:
			if port >= p.Port.IntVal && port <= *p.EndPort {
				return true
			}
		case p.Port.IntVal == port:
			return true
		}
	}
	return false
}

// checkNetwork: the NetworkPolicies name pods and ports that exist; only
// the router takes connections from outside, and each connection the
// platform makes is allowed.
func (c *cluster) checkNetwork(t *testing.T) {
	byName := map[string]workload{}
	for _, w := range c.workloads() {
		byName[w.name] = w
	}
	for name, p := range c.policies {
		pods := c.selected(t, &p.Spec.PodSelector)
		if len(pods) == 0 {
			t.Errorf("NetworkPolicy %s selects no pods", name)
		}
		for _, rule := range p.Spec.Ingress {
			for _, from := range rule.From {
				if from.PodSelector != nil && from.NamespaceSelector == nil && len(c.selected(t, from.PodSelector)) == 0 {
					t.Errorf("NetworkPolicy %s admits pods %v, which do not exist", name, from.PodSelector)
				}
			}
			for _, port := range rule.Ports {
				for _, w := range pods {
					if port.Port != nil && port.Port.Type == intstr.String {
						if _, ok := containerPort(&w.pod.Spec, *port.Port); !ok {
							t.Errorf("NetworkPolicy %s opens port %s, which %s does not declare", name, port.Port.StrVal, w)
						}
					}
				}
			}
		}
	}
	// From outside: the router's API, and nothing else.
	for _, w := range c.workloads() {
		for _, ctr := range w.pod.Spec.Containers {
			for _, cp := range ctr.Ports {
				if got, want := c.allows(t, nil, w, cp.ContainerPort), w.name == "router" && cp.Name == "http"; got != want {
					t.Errorf("a client outside may connect to %s port %s (%d): %v, want %v", w, cp.Name, cp.ContainerPort, got, want)
				}
			}
		}
	}
	for _, check := range []struct {
		from, to string
		port     int32
		want     bool
	}{
		{"router", "inference-worker", 9100, true},
		{"router", "inference-worker", 9131, true},
		{"billing", "clickhouse", c.clickhousePort(t), true},
		{"nats", "nats", 6222, true},
		{"router", "clickhouse", 9000, false},
		{"inference-worker", "deployer", 8080, false},
		{"router", "deployer", 8080, false},
		{"inference-worker", "inference-worker", 9100, false},
	} {
		from, to := byName[check.from], byName[check.to]
		if got := c.allows(t, &from, to, check.port); got != check.want {
			t.Errorf("%s may connect to %s on %d: %v, want %v", check.from, check.to, check.port, got, check.want)
		}
	}
	nats := byName[c.natsServers(t).Name]
	for _, w := range c.workloads() {
		for _, ctr := range w.pod.Spec.Containers {
			if svc, _ := serviceOf(ctr.Image); svc != "" && !c.allows(t, &w, nats, 4222) {
				t.Errorf("%s may not connect to NATS", w)
			}
		}
	}
	// The instance ports are the workers' own.
	worker := byName["inference-worker"]
	first, last, err := portRange(c.containerEnv(worker.pod.Spec.Containers[0])["MODELPORT_WORKER_PORTS"])
	if err != nil {
		t.Error(err)
	}
	router := byName["router"]
	if !c.allows(t, &router, worker, int32(first)) || !c.allows(t, &router, worker, int32(last)) {
		t.Errorf("the router may not reach instance ports %d-%d", first, last)
	}
}

// checkOverlay: what each overlay is for.
func (c *cluster) checkOverlay(t *testing.T) {
	workers := c.deployments["inference-worker"]
	gpus := workers.Spec.Template.Spec.Containers[0].Resources.Limits["nvidia.com/gpu"]
	minRouters := *c.hpas["router"].Spec.MinReplicas
	switch c.overlay {
	case "dev":
		if !gpus.IsZero() {
			t.Errorf("dev workers ask for %s GPUs; dev runs on the simulator", gpus.String())
		}
	case "production":
		if gpus.IsZero() {
			t.Error("production workers ask for no GPU")
		}
		if svc, _ := serviceOf(workers.Spec.Template.Spec.Containers[0].Image); svc != "inference-worker" || !strings.Contains(workers.Spec.Template.Spec.Containers[0].Image, "vllm") {
			t.Errorf("production workers run %s, not the vLLM worker image", workers.Spec.Template.Spec.Containers[0].Image)
		}
		if minRouters < 2 {
			t.Errorf("production runs %d router at least", minRouters)
		}
		public := false
		for _, s := range c.services {
			public = public || s.Spec.Type == corev1.ServiceTypeLoadBalancer
		}
		if !public {
			t.Error("production publishes no router")
		}
	}
	if _, ok := c.secrets["modelport-admin"]; ok {
		t.Error("the admin key Secret keeps its plain name: kustomize should give the generated one a hash suffix")
	}
}
