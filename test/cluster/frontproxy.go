package cluster

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"os"
	"path/filepath"
	"time"
)

// Files written by frontProxyArgs into its dir.
const (
	frontProxyCAFile   = "front-proxy-ca.crt"
	frontProxyCAKey    = "front-proxy-ca.key"
	frontProxyCertFile = "front-proxy-client.crt"
	frontProxyKeyFile  = "front-proxy-client.key"

	// FrontProxyClientName is the CN of the client certificate kube-apiserver presents to aggregated servers
	// (kubeadm uses the same name); it is the only name passed in --requestheader-allowed-names.
	FrontProxyClientName = "front-proxy-client"
)

// frontProxyArgs writes a front-proxy CA and a front-proxy client certificate into dir and returns the
// kube-apiserver flags that make it proxy aggregated API calls (virt-api's subresources.kubevirt.io) with that
// certificate and the X-Remote-User/X-Remote-Group/X-Remote-Extra- headers (the same flags kubeadm sets). virt-api
// trusts that CA through kube-system/extension-apiserver-authentication, which kube-apiserver writes itself.
//
// No --enable-aggregator-routing: with it off (the default), kube-aggregator resolves an APIService's Service with
// k8s.io/apiserver/pkg/util/proxy.ResolveCluster, which turns an ExternalName Service into
// https://<externalName>:<apiservice port> — that is how the test apiserver reaches virt-api on 127.0.0.1
// (Endpoints/EndpointSlices cannot hold loopback addresses, and envtest has no kube-proxy for a ClusterIP).
func frontProxyArgs(dir string) (map[string][]string, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	caPath := filepath.Join(dir, frontProxyCAFile)
	certPath := filepath.Join(dir, frontProxyCertFile)
	keyPath := filepath.Join(dir, frontProxyKeyFile)
	ca, err := newCA("runpolicy-test-front-proxy-ca")
	if err != nil {
		return nil, err
	}
	client, err := ca.issue(FrontProxyClientName, nil, x509.ExtKeyUsageClientAuth)
	if err != nil {
		return nil, err
	}
	for path, data := range map[string][]byte{
		caPath:                              ca.certPEM,
		filepath.Join(dir, frontProxyCAKey): ca.keyPEM,
		certPath:                            client.certPEM,
		keyPath:                             client.keyPEM,
	} {
		if err := os.WriteFile(path, data, 0o600); err != nil {
			return nil, err
		}
	}
	return map[string][]string{
		"requestheader-client-ca-file":       {caPath},
		"requestheader-allowed-names":        {FrontProxyClientName},
		"requestheader-username-headers":     {"X-Remote-User"},
		"requestheader-group-headers":        {"X-Remote-Group"},
		"requestheader-extra-headers-prefix": {"X-Remote-Extra-"},
		"proxy-client-cert-file":             {certPath},
		"proxy-client-key-file":              {keyPath},
	}, nil
}

type keyPair struct {
	cert    *x509.Certificate
	key     *ecdsa.PrivateKey
	certPEM []byte
	keyPEM  []byte
}

func newCA(cn string) (*keyPair, error) {
	return newCert(cn, nil, nil, nil)
}

func (ca *keyPair) issue(cn string, dnsNames []string, usage x509.ExtKeyUsage) (*keyPair, error) {
	return newCert(cn, dnsNames, []x509.ExtKeyUsage{usage}, ca)
}

func newCert(cn string, dnsNames []string, usages []x509.ExtKeyUsage, parent *keyPair) (*keyPair, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 62))
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: cn},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(10 * 365 * 24 * time.Hour),
		DNSNames:     dnsNames,
		ExtKeyUsage:  usages,
		KeyUsage:     x509.KeyUsageDigitalSignature,
	}
	signer, signerKey := tmpl, key
	if parent == nil {
		tmpl.IsCA = true
		tmpl.BasicConstraintsValid = true
		tmpl.KeyUsage |= x509.KeyUsageCertSign
	} else {
		signer, signerKey = parent.cert, parent.key
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, signer, &key.PublicKey, signerKey)
	if err != nil {
		return nil, err
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return nil, err
	}
	return &keyPair{
		cert:    cert,
		key:     key,
		certPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		keyPEM:  pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER}),
	}, nil
}
